"""Aerial Dubai, six classes from colour masks: train, predict the held-out images, print per-class IoU.

    nice -n 10 python -m benchmarks.aerial_dubai [--out /tmp/tilewise-dubai] [--epochs 20] [--steps-per-epoch 25]

Trains with ``configs/aerial_dubai.yaml`` (parts 1-7 of Tiles 1 and 2), then segments parts 8-9 of both tiles
with ``predict`` (labels, overlap 0.5) and scores them against their masks (decoded through the same palette):
per-class IoU and Dice, mean IoU, pixel error. Prints the CPU time of training.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "aerial_dubai.yaml"


def score(checkpoint: Path, workdir: Path) -> None:
    from pipeline import predict
    from pipeline.training import options_from_config
    from pipeline.training.data import open_pairs
    from pipeline.training.masks import MaskEncoding
    from pipeline.training.metrics import Confusion
    from pipeline.training.paths import expand_paths
    from tiling.plan import Span

    opts = options_from_config(CONFIG)
    encoding = MaskEncoding.from_options(opts.mask_encoding, opts.class_names, opts.palette, opts.ignore_value)
    images, masks = expand_paths(opts.val_images), expand_paths(opts.val_masks)
    confusion = Confusion(len(opts.class_names))
    for pair, image in zip(open_pairs(images, masks, None, encoding, "validation"), images, strict=True):
        out = workdir / (Path(image).parent.parent.name + "_" + Path(image).stem + ".tif")
        predict(image, out, checkpoint, output_kind="labels", overlap=0.5, overwrite=True)
        with rasterio.open(out) as ds:
            predicted = ds.read(1).astype(np.int64)
        truth = pair.decode(Span(0, pair.height), Span(0, pair.width))
        confusion.add(predicted, truth)
        pair.close()
    scores = confusion.scores(opts.class_names)
    print(f"held-out images ({len(images)}: parts 8-9 of Tiles 1 and 2), {confusion.matrix.sum()} pixels:")
    print(f"  {'class':<12}{'pixels':>10}{'IoU':>8}{'Dice':>8}")
    for i, name in enumerate(opts.class_names):
        print(f"  {name:<12}{confusion.matrix[i].sum():>10}{scores.iou[i]:>8.3f}{scores.dice[i]:>8.3f}")
    print(f"  mean IoU {scores.mean_iou:.3f}, mean Dice {scores.mean_dice:.3f}, pixel error {scores.pixel_error:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tilewise-dubai"), help="work folder")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="override the config's steps per epoch")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--score-only", action="store_true", help="score the checkpoint already in --out")
    args = parser.parse_args()
    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # JPEG/PNG tiles carry no georeferencing
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "aerial_dubai.safetensors"

    from pipeline import train

    if not args.score_only:
        report = train(
            config=CONFIG,
            out=checkpoint,
            overwrite=True,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            threads=args.threads,
            device=args.device,
            on_epoch=lambda r: print(
                f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}, val mean IoU {r['val_iou']:.4f}, "
                f"pixel error {r['val_pixel_error']:.4f} ({r['seconds']:.0f} s)",
                flush=True,
            ),
        )
        print(
            f"trained {report.epochs} epochs in {report.seconds / 60:.1f} min wall, "
            f"{report.cpu_seconds / 60:.1f} CPU-min on {report.device}; best epoch {report.best_epoch}"
        )
    began = time.perf_counter()
    score(checkpoint, args.out)
    print(f"(prediction and scoring: {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
