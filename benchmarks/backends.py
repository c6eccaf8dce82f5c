"""Engines and precisions on a CPU: model alone against end to end, label agreement with torch fp32, peak RSS.

    python -m benchmarks.backends [--sizes 4096] [--repeats 2] [--engines torch:fp32 openvino:bf16 ... monai:fp32]
    python -m benchmarks.predict --modes backends     (the same table, from the core-engine benchmark)

Each engine and precision runs in a child process of its own (peak RSS is per process), the children of a round
in one order and the next round in the reverse order, so the machine's drift (it is shared with other jobs,
and its speed moves by 10-20 % within minutes) favours none. A child runs the CLI's ``predict`` once cold (the
conversion, or the converted model found on disk, and the batch sizer's choice), then alternates two warm
end-to-end runs with two runs of the model alone on the same tiles, laid out as the run lays them out
(``predict._model_alone``). The figures are the fastest of each side over the rounds; the labels of the last run
are compared with torch fp32's.

``monai:fp32`` (where MONAI is installed: ``pip install 'tilewise[bench]'``) runs MONAI's ``sliding_window_inference``
beside them: the same model in torch fp32, the same tile, overlap and Gaussian window (``seams.monai_pass``), over
the whole scene read into memory; its "end to end" is the read, the sliding window and the labels in memory, no
file written, and it has no model-alone figure. It runs once per ``--monai-batch`` (its ``sw_batch_size``: windows
per forward pass, on all the process's torch threads).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .predict import ROOT, _model_alone, _peak_rss_mib, _scene, _tile_batches

CPU_KEYS = ("end_to_end_cpu_s", "model_alone_cpu_s")
ENGINES = ("torch:fp32", "torch:bf16", "onnxruntime:fp32", "openvino:fp32", "openvino:bf16", "monai:fp32")
MONAI = "monai:fp32"  # run as monai:fp32:B, B windows per forward pass


def _checkpoint(workdir: Path, model: str) -> Path:
    """The default U-Net (width 16, depth 4, random weights, tile 256) or a trained checkpoint's path."""
    if model != "default":
        return Path(model)
    from .predict import _default_checkpoint

    return _default_checkpoint(workdir)


def child(scene: Path, workdir: Path, engine: str, model: str, pairs: int = 2) -> dict[str, float | str]:
    import time

    from pipeline import predict
    from pipeline.cache import model_cache
    from pipeline.options import PredictOptions
    from pipeline.run_plan import plan_run

    backend, precision = engine.split(":")
    checkpoint = _checkpoint(workdir, model)
    out = workdir / f"labels_{backend}_{precision}_{scene.stem}.tif"
    options = {"backend": backend, "precision": precision}
    began = time.perf_counter()
    first = predict(scene, out, checkpoint, overwrite=True, **options)
    cold = time.perf_counter() - began
    peak = _peak_rss_mib()
    with plan_run(scene, checkpoint, PredictOptions(**options)) as plan:
        runner = model_cache().runner(plan.job.model)
    batches = _tile_batches(scene, plan.grid, first.batch_size or 1)
    runs, alone, runs_cpu, alone_cpu = [], [], [], []

    def one_run() -> None:
        cpu = _process_cpu()
        runs.append(predict(scene, out, checkpoint, overwrite=True, **options).seconds)
        runs_cpu.append(_process_cpu() - cpu)

    for pair in range(pairs):
        if pair % 2 == 0:
            one_run()
        cpu = _process_cpu()
        alone.append(_model_alone(runner, batches, first.workers)[0])
        alone_cpu.append(_process_cpu() - cpu)
        if pair % 2 == 1:
            one_run()
    return {
        "engine": engine,
        "backend_used": first.backend or "",
        "first_run_s": cold,
        "end_to_end_s": min(runs),
        "model_alone_s": min(alone),
        "s_per_tile_alone": min(alone) / first.tiles_run,
        "end_to_end_cpu_s": min(runs_cpu),
        "model_alone_cpu_s": min(alone_cpu),
        "batch": first.batch_size or 1,
        "workers": first.workers,
        "peak_rss_mib": peak,
        "labels": str(out),
    }


def monai_child(scene: Path, workdir: Path, model: str, pairs: int = 2, batch: int = 4) -> dict[str, float | str]:
    """MONAI's sliding window on the scene: one cold run, then ``pairs`` warm ones (the fastest is kept)."""
    import time

    import rasterio

    from pipeline import load_checkpoint
    from pipeline.options import PredictOptions
    from tiling.grid import resolve_overlap
    from tiling.writers.encode import to_labels

    from .seams import monai_pass

    checkpoint = load_checkpoint(_checkpoint(workdir, model))
    defaults = PredictOptions()  # what the tilewise rows run with: the card's tile, overlap, window and threshold
    tile = checkpoint.card.tile_size
    overlap = resolve_overlap(defaults.overlap, tile) / tile

    def one_run() -> tuple[float, float, np.ndarray]:
        began, cpu = time.perf_counter(), _process_cpu()
        with rasterio.open(scene) as src:
            image = src.read()
        probs = monai_pass(image, checkpoint, tile, overlap, defaults.blend, batch, defaults.sigma)
        labels = to_labels(probs, defaults.threshold)
        return time.perf_counter() - began, _process_cpu() - cpu, labels

    cold, _, labels = one_run()
    peak = _peak_rss_mib()
    warm = [one_run()[:2] for _ in range(pairs)]
    out = workdir / f"labels_monai_b{batch}_{scene.stem}.npy"
    np.save(out, labels)
    nan = float("nan")
    return {
        "engine": f"{MONAI}:{batch}",
        "backend_used": "monai",
        "first_run_s": cold,
        "end_to_end_s": min(w[0] for w in warm),
        "model_alone_s": nan,
        "s_per_tile_alone": nan,
        "end_to_end_cpu_s": min(w[1] for w in warm),
        "model_alone_cpu_s": nan,
        "batch": batch,
        "workers": 1,
        "peak_rss_mib": peak,
        "labels": str(out),
    }


def _process_cpu() -> float:
    """CPU seconds of this process so far (user and system, every thread)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _labels(path: str) -> np.ndarray:
    import rasterio

    if path.endswith(".npy"):
        return np.load(path)
    with rasterio.open(path) as ds:
        return ds.read(1)


def _agreement(labels: str, reference: str) -> float:
    return float((_labels(labels) == _labels(reference)).mean())


def _available(engine: str) -> bool:
    """Whether ``engine`` can run here; a missing MONAI is said in one line."""
    from pipeline.backends import installed

    if engine != MONAI:
        return installed(engine.split(":")[0])
    if importlib.util.find_spec("monai") is None:
        print("MONAI is not installed (pip install 'tilewise[bench]'): its sliding window is left out", flush=True)
        return False
    return True


def _figure(value: float, form: str) -> str:
    return "–" if value != value else format(value, form)  # NaN: a figure the row has not (MONAI's model alone)


def run_table(
    sizes: list[int],
    workdir: Path,
    engines: list[str],
    repeats: int,
    model: str,
    pairs: int = 2,
    monai_batches: tuple[int, ...] = (1, 4),
) -> None:
    engines = [e for e in engines if _available(e)]
    if MONAI in engines:
        engines[engines.index(MONAI) : engines.index(MONAI) + 1] = [f"{MONAI}:{b}" for b in monai_batches]
    for size in sizes:
        scene = _scene(workdir, size)
        best: dict[str, dict] = {}
        for round_ in range(repeats):
            for engine in engines if round_ % 2 == 0 else engines[::-1]:
                cmd = [sys.executable, "-m", "benchmarks.backends", "--child", engine, "--scene", str(scene)]
                cmd += ["--workdir", str(workdir), "--model", model, "--pairs", str(pairs)]
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
                figures = json.loads(done.stdout.splitlines()[-1])
                kept = best.setdefault(engine, figures)
                for key in ("end_to_end_s", "model_alone_s", "s_per_tile_alone", "first_run_s", *CPU_KEYS):
                    kept[key] = min(kept[key], figures[key])
                kept["peak_rss_mib"] = float(np.median([kept["peak_rss_mib"], figures["peak_rss_mib"]]))
                print(f"  round {round_} {engine}: e2e {figures['end_to_end_s']:.2f} s", file=sys.stderr, flush=True)
        reference = best.get("torch:fp32")
        print(f"\n{size}² ({model}), fastest of {repeats} alternating process(es) each")
        print(
            "| engine | precision | batch | model alone s/tile | model alone s | end to end s | alone / e2e "
            "| CPU s alone / e2e | vs torch fp32 e2e | labels = torch fp32 | first run s | peak RSS MiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for engine in engines:
            f = best[engine]
            backend, precision = engine.split(":")[:2]
            agree = _agreement(f["labels"], reference["labels"]) if reference else float("nan")
            speed = reference["end_to_end_s"] / f["end_to_end_s"] if reference else float("nan")
            if engine.startswith(MONAI):
                backend = "MONAI sliding_window_inference"
            print(
                f"| {backend} | {precision} | {f['batch']} | {_figure(f['s_per_tile_alone'], '.4f')} "
                f"| {_figure(f['model_alone_s'], '.2f')} | {f['end_to_end_s']:.2f} "
                f"| **{_figure(f['model_alone_s'] / f['end_to_end_s'], '.3f')}** "
                f"| {_figure(f['model_alone_cpu_s'], '.1f')} / {f['end_to_end_cpu_s']:.1f} | {speed:.2f}× "
                f"| {100 * agree:.4f} % | {f['first_run_s']:.1f} | {f['peak_rss_mib']:.0f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-bench")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--repeats", type=int, default=2, help="rounds of alternating processes")
    parser.add_argument("--model", default="default", help="default (random U-Net 16/4) or a checkpoint's path")
    parser.add_argument("--pairs", type=int, default=2, help="warm end-to-end / model-alone pairs per process")
    parser.add_argument(
        "--monai-batch", type=int, nargs="+", default=[1, 4], help="MONAI's sw_batch_size (windows per forward)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child and args.child.startswith(MONAI):
        batch = int(args.child.rpartition(":")[2])
        print(json.dumps(monai_child(args.scene, args.workdir, args.model, args.pairs, batch)))
        return
    if args.child:
        print(json.dumps(child(args.scene, args.workdir, args.child, args.model, args.pairs)))
        return
    run_table(args.sizes, args.workdir, args.engines, args.repeats, args.model, args.pairs, tuple(args.monai_batch))


if __name__ == "__main__":
    main()
