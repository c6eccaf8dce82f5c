"""Training on a CPU in float32 against bf16 autocast at equal CPU time, on ISBI 2012 (EM membranes) or MoNuSeg.

    nice -n 10 python -m benchmarks.train_amp [--budget 300] [--steps-per-epoch 10] [--amp off on]
    nice -n 10 python -m benchmarks.train_amp --config monuseg_nuclei      (nuclei; objects scored after)
    nice -n 10 python -m benchmarks.train_amp --step-pairs 10     (the training step alone, fp32 against bf16)

Each run trains ``configs/isbi2012.yaml`` (same seed, same batches, same planned schedule: ``--epochs`` ×
``--steps-per-epoch`` steps, cosine) until its process has used ``--budget`` CPU seconds, checked after each
epoch's validation (slices 25-29, in float32 for both). The figures are those of the last epoch that ended within
the budget: the optimiser steps done, and the validation pixel error and Dice ``tilewise train`` prints and
records; the epoch that went past the budget is reported beside them. ``--amp off`` is float32, ``--amp on`` bf16
autocast (what ``auto`` picks on a CPU with native bf16). The runs alternate in order with ``--rounds 2``.
With ``--config monuseg_nuclei`` each run's saved model is also scored on the held-out MoNuSeg images
(``benchmarks.nuclei``: mean AJI and object F1 at IoU ≥ 0.5 of its instances).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

from rasterio.errors import NotGeoreferencedWarning

from . import isbi2012, nuclei

#: The training configurations this benchmark runs, and the data each needs.
CONFIGS = {"isbi2012": (isbi2012.CONFIG, isbi2012.DATA), "monuseg_nuclei": (nuclei.CONFIG, nuclei.DATA)}


class _BudgetSpent(Exception):
    """Raised after the epoch that used up the budget (the run's files up to it are kept)."""


def run(config: str, amp: str, budget: float, epochs: int, steps: int, out: Path, threads: int) -> dict[str, Any]:
    from pipeline import train

    began, cpu_began = time.perf_counter(), time.process_time()
    rows: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append({**row, "cpu_s": time.process_time() - cpu_began, "wall_s": time.perf_counter() - began})
        if rows[-1]["cpu_s"] >= budget:
            raise _BudgetSpent

    precision = "?"
    try:
        report = train(
            config=CONFIGS[config][0],
            out=out / f"{config}_{amp}.safetensors",
            overwrite=True,
            epochs=epochs,
            steps_per_epoch=steps,
            schedule="cosine",
            amp=amp,
            threads=threads,
            plot=False,
            on_epoch=on_epoch,
        )
        precision = report.precision
    except _BudgetSpent:  # the precision the run trained in, as train chose it
        from pipeline.training.forward import AUTOCAST_NAMES, training_autocast

        precision = AUTOCAST_NAMES[training_autocast(amp, "cpu")]
    within = [r for r in rows if r["cpu_s"] <= budget] or rows[:1]
    result = {"amp": amp, "precision": precision, "within": within[-1], "last": rows[-1], "steps": steps}
    if config == "monuseg_nuclei":
        result["objects"] = _nuclei_scores(out / f"{config}_{amp}.safetensors", out / f"nuclei_{amp}")
    return result


def _nuclei_scores(model: Path, workdir: Path) -> tuple[float, float]:
    """Mean AJI and object F1 at IoU ≥ 0.5 of ``model``'s instances on the held-out MoNuSeg images."""
    import numpy as np

    from pipeline.training.instance_metrics import score_objects

    workdir.mkdir(parents=True, exist_ok=True)
    scores = [
        score_objects(nuclei.truth_of(image), nuclei.objects_of(image, model, workdir)[0]) for image in nuclei.HELD_OUT
    ]
    aji, f1 = np.mean([(s.aji, s.f1) for s in scores], axis=0)
    return float(aji), float(f1)


def steps_alone(pairs: int, threads: int) -> None:
    """CPU seconds of the training step alone (forward, backward, AdamW) of the ISBI config's model on one random
    batch, fp32 and bf16 interleaved ``pairs`` times after one untimed step each; and of the forward alone."""
    import statistics

    import torch

    from pipeline import TrainOptions, UNetConfig
    from pipeline.training.forward import forward_logits
    from pipeline.training.learner import build_learner
    from pipeline.training.losses import make_loss

    torch.set_num_threads(threads)
    opts = TrainOptions(base_width=16, depth=4, tile=256, lr=0.002)
    config = UNetConfig(in_channels=1, classes=1, base_width=16, depth=4, batch_norm=True)
    loss = make_loss("bce+dice", True, None)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 256, 256, generator=generator)
    y = (torch.rand(4, 256, 256, generator=generator) > 0.5).long()
    learners = {
        "fp32": build_learner(opts, config, "cpu", None),
        "bf16": build_learner(opts, config, "cpu", torch.bfloat16),
    }
    steps: dict[str, list[float]] = {name: [] for name in learners}
    forwards: dict[str, list[float]] = {name: [] for name in learners}
    for learner in learners.values():
        learner.step(x, y, loss)
    for pair in range(pairs):
        for name in list(learners) if pair % 2 == 0 else list(learners)[::-1]:
            learner = learners[name]
            cpu = time.process_time()
            learner.step(x, y, loss)
            steps[name].append(time.process_time() - cpu)
            cpu = time.process_time()
            with torch.no_grad():
                forward_logits(learner.model, x, learner.autocast)
            forwards[name].append(time.process_time() - cpu)
    for name in learners:
        print(
            f"{name}: step alone {min(steps[name]):.2f} CPU-s fastest, {statistics.median(steps[name]):.2f} median; "
            f"forward {min(forwards[name]):.2f} fastest ({pairs} each, {threads} threads)",
            flush=True,
        )


def _line(result: dict[str, Any]) -> str:
    w, last, steps = result["within"], result["last"], result["steps"]
    objects = result.get("objects")
    held_out = f" AJI {objects[0]:.3f}, F1 {objects[1]:.3f} |" if objects else ""
    return (
        f"| {result['precision']} (--amp {result['amp']}) | {int(w['epoch']) * steps} | {w['cpu_s']:.0f} "
        f"| {w['wall_s']:.0f} | {w['cpu_s'] / (int(w['epoch']) * steps):.2f} | {w['val_pixel_error']:.4f} "
        f"| {w['val_dice']:.4f} | {int(last['epoch']) * steps} steps: {last['val_pixel_error']:.4f} "
        f"({last['cpu_s']:.0f} CPU s) |{held_out}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=list(CONFIGS), default="isbi2012", help="what to train")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tilewise-train-amp"), help="work folder")
    parser.add_argument("--budget", type=float, default=300.0, help="CPU seconds per run (process, every thread)")
    parser.add_argument("--epochs", type=int, default=60, help="planned epochs (the schedule's length)")
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", nargs="+", default=["off", "on"], choices=["off", "on", "auto"])
    parser.add_argument("--rounds", type=int, default=1, help="rounds, alternating the runs' order")
    parser.add_argument("--step-pairs", type=int, default=0, help="only time the step alone, this many pairs")
    args = parser.parse_args()
    if args.step_pairs:
        steps_alone(args.step_pairs, args.threads)
        return
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    data = CONFIGS[args.config][1]
    if not data.exists():
        raise SystemExit(f"{args.config}: data not found at {data}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for round_ in range(args.rounds):
        for amp in args.amp if round_ % 2 == 0 else args.amp[::-1]:
            results.append(
                run(args.config, amp, args.budget, args.epochs, args.steps_per_epoch, args.out, args.threads)
            )
            print(f"  round {round_}: {_line(results[-1])}", flush=True)
    per_run = f"{args.budget:.0f} CPU-s per run, {args.threads} threads, {args.steps_per_epoch} steps an epoch"
    print(f"\n{args.config}, {per_run}")
    objects = " held-out objects |" if results[0].get("objects") else ""
    print(
        "| precision | steps within the budget | CPU s | wall s | CPU s / step (with validation) "
        f"| val pixel error | val Dice | next epoch, past the budget |{objects}"
    )
    print("|---|---|---|---|---|---|---|---|" + ("---|" if objects else ""))
    for result in results:
        print(_line(result))


if __name__ == "__main__":
    main()
