"""ISBI 2012 EM membranes (the U-Net paper's data): train on slices 0-24, score slices 25-29 held out.

    nice -n 10 python -m benchmarks.isbi2012 [--out /tmp/tilewise-isbi] [--epochs 30] [--steps-per-epoch 25]
                                             [--weight-map] [--padding valid] [--tile 128]

Trains with ``configs/isbi2012.yaml`` (the project's own ``train``), then segments the held-out slices with
``predict`` (Gaussian-blended 256-px tiles, overlap 0.5; without and with flip TTA) and prints, per slice and
overall:
- pixel error: share of pixels whose cell/membrane label (probability of "cell" ≥ 0.5) is wrong;
- Rand error: ``skimage.metrics.adapted_rand_error`` between the connected cell regions (4-connectivity) of the
  truth and of the prediction, truth membrane pixels ignored, at threshold 0.5, and the best over thresholds
  0.1-0.9 (the ISBI challenge scored the best threshold of a probability map).
The CPU time budget is fixed by the config's steps (30 epochs × 25 steps × 4 tiles of 256²; at most 40
CPU-minutes on two cores, 28.9 measured); the CPU time actually used is printed. The U-Net paper's figures
(challenge test set, not these slices): pixel error 0.0611, Rand error 0.0382.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import NotGeoreferencedWarning

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "isbi2012.yaml"
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
HELD_OUT = range(25, 30)
PAPER = {"pixel_error": 0.0611, "rand_error": 0.0382}
THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.1), 2)


def rand_error(truth_cells: np.ndarray, predicted_cells: np.ndarray) -> float:
    """Adapted Rand error between the connected cell regions of truth and prediction (truth membranes ignored)."""
    from skimage.measure import label
    from skimage.metrics import adapted_rand_error

    truth = label(truth_cells, connectivity=1)
    predicted = label(predicted_cells, connectivity=1)
    return float(adapted_rand_error(truth, predicted, ignore_labels=(0,))[0])


def score_slices(checkpoint: Path, workdir: Path, tta: str) -> dict[str, Any]:
    import rasterio

    from pipeline import predict

    rows = []
    errors_by_threshold = {float(t): [] for t in THRESHOLDS}
    for index in HELD_OUT:
        out = workdir / f"probs_{index}_{tta}.tif"
        image = DATA / "image" / f"{index}.png"
        predict(image, out, checkpoint, output_kind="probs", overlap=0.5, tta=tta, overwrite=True)
        with rasterio.open(out) as ds:
            cell = ds.read(1)  # the binary model's band: probability of "cell"
        with rasterio.open(DATA / "label" / f"{index}.png") as ds:
            truth = ds.read(1) >= 128
        pixel_error = float(((cell >= 0.5) != truth).mean())
        rand = rand_error(truth, cell >= 0.5)
        for t in THRESHOLDS:
            errors_by_threshold[float(t)].append(rand_error(truth, cell >= t))
        rows.append((index, pixel_error, rand))
        print(f"  slice {index}: pixel error {pixel_error:.4f}, Rand error {rand:.4f} (threshold 0.5)")
    best_t = min(errors_by_threshold, key=lambda t: np.mean(errors_by_threshold[t]))
    return {
        "pixel_error": float(np.mean([r[1] for r in rows])),
        "rand_error": float(np.mean([r[2] for r in rows])),
        "best_threshold": best_t,
        "rand_error_best_threshold": float(np.mean(errors_by_threshold[best_t])),
        "sweep": {t: float(np.mean(e)) for t, e in errors_by_threshold.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tilewise-isbi"), help="work folder")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="override the config's steps per epoch")
    parser.add_argument("--class-weights", help="override the config's class_weights (balanced)")
    parser.add_argument(
        "--weight-map", action="store_true", help="the U-Net paper's separation weights (w0 10, σ 5 px) on the loss"
    )
    parser.add_argument(
        "--padding",
        choices=("same", "valid"),
        help="override the config's padding (valid: the paper's unpadded convolutions, tiles abutting)",
    )
    parser.add_argument("--tile", type=int, help="override the config's training tile (a valid model's: its output)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--score-only", action="store_true", help="score the checkpoint already in --out")
    args = parser.parse_args()
    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the slices are plain PNGs
    if not DATA.exists():
        raise SystemExit(f"ISBI 2012 data not found at {DATA}")
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "isbi2012.safetensors"

    from pipeline import train

    if not args.score_only:
        report = train(
            config=CONFIG,
            out=checkpoint,
            overwrite=True,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            class_weights=args.class_weights,
            weight_map=True if args.weight_map else None,
            padding=args.padding,
            tile=args.tile,
            threads=args.threads,
            device=args.device,
            on_epoch=lambda r: print(
                f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}, val pixel error {r['val_pixel_error']:.4f}, "
                f"val Dice {r['val_dice']:.4f} ({r['seconds']:.0f} s)",
                flush=True,
            ),
        )
        print(
            f"trained {report.epochs} epochs in {report.seconds / 60:.1f} min wall, "
            f"{report.cpu_seconds / 60:.1f} CPU-min on {report.device}; best epoch {report.best_epoch}"
        )
    for tta in ("none", "flips"):
        cpu, wall = time.process_time(), time.perf_counter()
        print(f"predict with tta {tta}:")
        scores = score_slices(checkpoint, args.out, tta)
        print(
            f"held-out slices 25-29, tta {tta} (predict and scoring: {time.perf_counter() - wall:.0f} s wall, "
            f"{(time.process_time() - cpu) / 60:.1f} CPU-min):"
        )
        print(f"  pixel error {scores['pixel_error']:.4f}   (U-Net paper, challenge test set: {PAPER['pixel_error']})")
        print(
            f"  Rand error  {scores['rand_error']:.4f} at threshold 0.5, {scores['rand_error_best_threshold']:.4f} "
            f"at the best threshold {scores['best_threshold']}   (U-Net paper: {PAPER['rand_error']})"
        )
        print("  Rand error by threshold: " + ", ".join(f"{t}: {e:.4f}" for t, e in scores["sweep"].items()))


if __name__ == "__main__":
    main()
