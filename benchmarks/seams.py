"""Seams: how far tiled prediction is from one forward pass over the whole image, for 'same' and 'valid' models.

    nice -n 10 python -m benchmarks.seams [--out /tmp/tilewise-seams] [--epochs 8] [--steps-per-epoch 25]
        [--same CKPT] [--valid CKPT] [--scene 4096]

Trains (unless given) a 'same' model with ``configs/isbi2012.yaml`` and a 'valid' one with the same config,
``padding: valid`` and a 128-px output tile, then on the held-out ISBI slices 25-29 prints, against one whole-image
forward pass (the 'same' model: the 512² slice as it is; the 'valid' model: reflect-padded by c and up to a legal
size), the share of pixels whose label (p ≥ 0.5) agrees and the largest |Δp|:
- the 'same' model through ``predict`` at tile 128/256 and overlap 0.25/0.5 with the Gaussian, constant and rim
  windows, and MONAI's ``sliding_window_inference`` (Gaussian and constant) beside it when MONAI is installed;
  then the bound no blend window can pass: the share of pixels whose label some tile covering them gives;
- the 'same' model on crops smaller than one tile, padded up to it with zeros (``predict``'s fill) or mirrored
  (``PaddedInput(fill="reflect")``), against one pass over the crop itself;
- the 'valid' model through ``predict`` at output tiles 128 and 256 (abutting: no overlap, no blend).
Then the time per output megapixel of each mode on a ``--scene``² mosaic of ISBI slices (0: skip), the same
scene ``benchmarks.predict`` sizes by default.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rasterio.errors import NotGeoreferencedWarning

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "isbi2012.yaml"
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
HELD_OUT = range(25, 30)
TILES = (128, 256)
OVERLAPS = (0.25, 0.5)
BLENDS = ("gaussian", "constant", "rim")
VALID_TILE = 128
#: Crop sides smaller than each tile, for the fill past a small raster's end.
SMALL = ((128, (64, 96, 112)), (256, (160, 208, 240)))
SMALL_STEP = 64


def _slice(index: int) -> np.ndarray:
    import rasterio

    with rasterio.open(DATA / "image" / f"{index}.png") as ds:
        return ds.read()  # (1, 512, 512) uint8


def _normalised(image: np.ndarray, checkpoint) -> np.ndarray:
    norm = checkpoint.card.normalization
    mean = np.array(norm.mean, np.float32)[:, None, None]
    return (image.astype(np.float32) - mean) / np.array(norm.std, np.float32)[:, None, None]


def whole_image_pass(image: np.ndarray, checkpoint) -> np.ndarray:
    """Probabilities of one forward pass over the whole image (a valid model: reflect-padded by c and up to a
    legal size, as ``tests/test_valid_predict.py`` checks ``predict`` against)."""
    from pipeline.model import logits_to_probs

    x = _normalised(image, checkpoint)
    config = checkpoint.card.model
    _, height, width = x.shape
    if config.valid:
        geometry, c = config.geometry, config.geometry.context
        pad = ((c, geometry.input_for_output(height) - height - c), (c, geometry.input_for_output(width) - width - c))
        x = np.pad(x, ((0, 0), *pad), mode="reflect")
    with torch.inference_mode():
        probs = logits_to_probs(checkpoint.model(torch.from_numpy(x[None])))[0].numpy()
    return probs[:, :height, :width]


def tiled(index: int, checkpoint_path: Path, workdir: Path, **options: object) -> np.ndarray:
    """``predict``'s probabilities of slice ``index``."""
    import zarr

    from pipeline import predict

    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"slice{index}.zarr"
    predict(DATA / "image" / f"{index}.png", out, checkpoint_path, output_kind="probs", overwrite=True, **options)
    return zarr.open_group(str(out), mode="r")["probs"][:]


def monai_pass(
    image: np.ndarray, checkpoint, tile: int, overlap: float, mode: str, batch: int = 4, sigma: float = 0.125
) -> np.ndarray:
    """Probabilities of MONAI's ``sliding_window_inference`` over the whole ``image`` (bands, H, W) in memory:
    ``tile``² windows overlapping by the fraction ``overlap``, ``batch`` at a time, blended with ``mode``
    (gaussian: σ = ``sigma`` · tile, or constant)."""
    from monai.inferers import sliding_window_inference

    from pipeline.model import logits_to_probs

    x = torch.from_numpy(_normalised(image, checkpoint)[None])
    with torch.inference_mode():
        probs = sliding_window_inference(
            x,
            (tile, tile),
            batch,
            lambda t: logits_to_probs(checkpoint.model(t)),
            overlap=overlap,
            mode=mode,
            sigma_scale=sigma,
        )
    return probs[0].numpy()


def _tile_pass(x: np.ndarray, checkpoint) -> np.ndarray:
    """Probabilities of one forward pass over the normalised window ``x`` (bands, rows, cols)."""
    from pipeline.model import logits_to_probs

    with torch.inference_mode():
        return logits_to_probs(checkpoint.model(torch.from_numpy(np.ascontiguousarray(x[None]))))[0].numpy()


def covering_tiles_bound(image: np.ndarray, checkpoint, whole: np.ndarray, tile: int, overlap: float) -> float:
    """Share of the pixels whose whole-pass label (a binary model's) some tile of ``predict``'s grid covering
    them gives: a blend of those tiles can pick at best that tile, so no window agrees more (short of averaging
    two wrong tiles into a right one)."""
    from tiling import TileGrid, resolve_overlap

    x = _normalised(image, checkpoint)
    grid = TileGrid(x.shape[1], x.shape[2], tile, resolve_overlap(overlap, tile))
    label = whole[0] >= 0.5
    hit = np.zeros_like(label)
    for t in grid.tiles():
        rows, cols = slice(t.y, t.y + tile), slice(t.x, t.x + tile)
        hit[rows, cols] |= (_tile_pass(x[:, rows, cols], checkpoint)[0] >= 0.5) == label[rows, cols]
    return float(hit.mean())


def compare(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Label agreement (p ≥ 0.5) and max |Δp| of (tiled, whole) probability pairs, over every slice."""
    agree = np.mean([np.mean((t >= 0.5) == (w >= 0.5)) for t, w in pairs])
    return float(agree), float(max(np.abs(t - w).max() for t, w in pairs))


def report(name: str, run: Callable[[int, np.ndarray], np.ndarray], wholes: dict[int, np.ndarray]) -> None:
    began = time.perf_counter()
    pairs = [(run(i, _slice(i)), wholes[i]) for i in HELD_OUT]
    agree, delta = compare(pairs)
    seconds = time.perf_counter() - began
    print(f"  {name:<44} agreement {100 * agree:8.4f} %   max |Δp| {delta:.2e}   ({seconds:.0f} s)", flush=True)


def train_model(path: Path, epochs: int, steps: int, **overrides: object) -> None:
    from pipeline import train

    result = train(config=CONFIG, out=path, overwrite=True, epochs=epochs, steps_per_epoch=steps, **overrides)
    print(
        f"trained {path.name}: {result.epochs} epochs of {steps} steps in {result.seconds / 60:.1f} min, "
        f"val Dice {result.history[-1]['val_dice']:.4f}",
        flush=True,
    )


def seams_same(same_path: Path, workdir: Path) -> None:
    from pipeline import load_checkpoint

    same = load_checkpoint(same_path)
    print(f"held-out ISBI slices {HELD_OUT.start}-{HELD_OUT.stop - 1}, against one whole-image pass:", flush=True)
    wholes = {i: whole_image_pass(_slice(i), same) for i in HELD_OUT}
    for tile in TILES:
        for overlap in OVERLAPS:
            for blend in BLENDS:
                name = f"same, predict, tile {tile}, overlap {overlap}, {blend}"
                options = {"tile": tile, "overlap": overlap, "blend": blend}
                report(name, lambda i, _image, o=options: tiled(i, same_path, workdir, **o), wholes)
            bound = np.mean([covering_tiles_bound(_slice(i), same, wholes[i], tile, overlap) for i in HELD_OUT])
            print(f"  {f'same, tile {tile}, overlap {overlap}: best covering tile':<44} agreement {100 * bound:8.4f} %")
            try:
                import monai  # noqa: F401
            except ImportError:
                print("  (MONAI is not installed: pip install 'tilewise[bench]' to compare with its sliding window)")
                continue
            for mode in ("gaussian", "constant"):
                name = f"same, MONAI, roi {tile}, overlap {overlap}, {mode}"
                report(name, lambda _i, image, a=(tile, overlap, mode): monai_pass(image, same, *a), wholes)


def small_rasters(same_path: Path) -> None:
    """Crops smaller than one tile (every ``SMALL_STEP`` px across each held-out slice), padded up to the tile
    with zeros after normalisation (what ``predict`` feeds the model) or mirrored, against one pass over the
    crop."""
    from pipeline import load_checkpoint

    same = load_checkpoint(same_path)
    for tile, sides in SMALL:
        for side in sides:
            starts = range(0, 513 - side, SMALL_STEP)
            crops = [_slice(i)[:, y : y + side, x : x + side] for i in HELD_OUT for y in starts for x in starts]
            wholes = [whole_image_pass(crop, same) for crop in crops]
            for mode, fill in (("constant", "zero"), ("reflect", "reflect")):
                pad = ((0, 0), (0, tile - side), (0, tile - side))
                tiles = [_tile_pass(np.pad(_normalised(c, same), pad, mode=mode), same) for c in crops]  # type: ignore[call-overload]
                agree, delta = compare([(t[:, :side, :side], w) for t, w in zip(tiles, wholes, strict=True)])
                name = f"same, {side}² crops in one {tile} tile, {fill} fill"
                print(f"  {name:<44} agreement {100 * agree:8.4f} %   max |Δp| {delta:.2e}", flush=True)


def seams_valid(valid_path: Path, workdir: Path) -> None:
    from pipeline import load_checkpoint

    valid = load_checkpoint(valid_path)
    wholes = {i: whole_image_pass(_slice(i), valid) for i in HELD_OUT}
    for tile in TILES:
        name = f"valid, predict, output tile {tile} (abutting)"
        report(name, lambda i, _image, t=tile: tiled(i, valid_path, workdir, tile=t), wholes)


def timing(same_path: Path, valid_path: Path, workdir: Path, side: int) -> None:
    """Seconds per output megapixel of each mode on a ``side``² mosaic of the ISBI slices."""
    import rasterio

    from pipeline import predict

    reps = -(-side // 512)
    mosaic = np.block([[_slice((r * reps + c) % 30)[0] for c in range(reps)] for r in range(reps)])[:side, :side]
    scene = workdir / f"mosaic{side}.tif"
    profile = {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(scene, "w", width=side, height=side, count=1, dtype="uint8", **profile) as ds:
        ds.write(mosaic[None])
    megapixels = side * side / 1e6
    print(f"time per output megapixel on a {side}² mosaic (best of 2 runs):")
    modes = [("same", same_path, {"tile": 256, "overlap": 0.25, "blend": b}) for b in ("gaussian", "rim")]
    modes += [("same", same_path, {"tile": 128, "overlap": 0.25, "blend": "rim"})]
    modes += [("valid", valid_path, {"tile": t}) for t in TILES]
    for kind, path, options in modes:
        seconds = []
        for _ in range(2):
            began = time.perf_counter()
            predict(scene, workdir / "timing.tif", path, overwrite=True, **options)
            seconds.append(time.perf_counter() - began)
        print(f"  {kind}, {options}: {min(seconds) / megapixels:.2f} s/MP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tilewise-seams"), help="work folder")
    parser.add_argument("--same", type=Path, help="a trained 'same' checkpoint (default: train one)")
    parser.add_argument("--valid", type=Path, help="a trained 'valid' checkpoint (default: train one)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--scene", type=int, default=4096, help="side of the timing mosaic (0: no timing)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    if not DATA.exists():
        raise SystemExit(f"ISBI 2012 data not found at {DATA}")
    args.out.mkdir(parents=True, exist_ok=True)
    same, valid = args.same, args.valid
    if same is None:
        same = args.out / "same.safetensors"
        train_model(same, args.epochs, args.steps_per_epoch)
    if valid is None:
        valid = args.out / "valid.safetensors"
        train_model(valid, args.epochs, args.steps_per_epoch, padding="valid", tile=VALID_TILE)
    seams_same(same, args.out / "same")
    small_rasters(same)
    seams_valid(valid, args.out / "valid")
    if args.scene:
        timing(same, valid, args.out, args.scene)


if __name__ == "__main__":
    main()
