"""The demo: segment the synthetic scene with the committed trained model and score it against the truth, then
count the nuclei in a crop of a real H&E slide.

    python -m sample_data.demo

Writes the scene (sample_data/generated/scene.tif, truth.tif; seed 0, 1536², a nodata corner) if it is absent,
runs ``tilewise predict`` with sample_data/demo_model.safetensors (trained by ``python -m
sample_data.train_demo`` on scenes of other seeds), and prints the Dice and IoU of "building" against the
truth over the valid pixels; the mask over the scene is drawn in scene_mask.png. Exits 1 if the Dice is below 0.90.

Then runs the nuclei model (sample_data/nuclei_model.safetensors, trained on MoNuSeg at 0.25 µm/px) on
sample_data/tissue_crop.tif (CC0, 0.499 µm/px, so read upsampled to the model's pixel size) and writes the
nuclei as instances, a table, QuPath detections and a preview with their outlines; exits 1 if it finds fewer
than MIN_NUCLEI.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import rasterio

from pipeline.cli import main as tilewise

from .generate import DEFAULT_OUT, HERE, write_scene

MODEL = HERE / "demo_model.safetensors"
SIZE = 1536
MIN_DICE = 0.90
NUCLEI_MODEL = HERE / "nuclei_model.safetensors"
TISSUE = HERE / "tissue_crop.tif"
#: The crop holds a few hundred nuclei; far fewer means the model or the reading went wrong.
MIN_NUCLEI = 100


def dice_and_iou(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    p, t = predicted[valid], truth[valid]
    overlap = float(np.logical_and(p, t).sum())
    total, union = float(p.sum() + t.sum()), float(np.logical_or(p, t).sum())
    return 2 * overlap / total, overlap / union


def main(out: Path = DEFAULT_OUT) -> int:
    out.mkdir(parents=True, exist_ok=True)
    code = buildings(out)
    return code or nuclei(out)


def buildings(out: Path) -> int:
    scene, truth_path, mask = out / "scene.tif", out / "truth.tif", out / "scene_mask.tif"
    preview = out / "scene_mask.png"
    if not (scene.exists() and truth_path.exists()):
        write_scene(scene, truth_path, SIZE, SIZE, seed=0, nodata_corner=True)
        print(f"wrote {scene} and {truth_path} ({SIZE} x {SIZE})", file=sys.stderr)
    command = ["predict", str(scene), str(mask), "--model", str(MODEL), "--output-kind", "both", "--overwrite"]
    command += ["--preview", str(preview)]
    print("tilewise " + " ".join(command), file=sys.stderr)
    code = tilewise(command)
    if code != 0:
        return code
    with rasterio.open(mask) as ds:
        labels = ds.read(1)
    with rasterio.open(truth_path) as ds:
        truth = ds.read(1)
    valid = (truth != 255) & (labels != 255)
    dice, iou = dice_and_iou(labels == 1, truth == 1, valid)
    verdict = "ok" if dice >= MIN_DICE else f"BELOW the demo's bar of {MIN_DICE}"
    print(f"building Dice {dice:.4f}, IoU {iou:.4f} against the synthetic truth ({valid.sum()} pixels): {verdict}")
    print(f"mask: {mask}; probabilities: {mask.with_name(mask.stem + '_probs.tif')}; preview: {preview}")
    return 0 if dice >= MIN_DICE else 1


def nuclei(out: Path) -> int:
    table, detections, preview = out / "nuclei.csv", out / "nuclei.geojson", out / "nuclei.png"
    command = ["predict", str(TISSUE), str(out / "nuclei.ome.tif"), "--model", str(NUCLEI_MODEL)]
    command += ["--output-kind", "instances", "--objects", str(table), "--vector", str(detections)]
    command += ["--vector-style", "qupath", "--preview", str(preview), "--overwrite"]
    print("tilewise " + " ".join(command), file=sys.stderr)
    code = tilewise(command)
    if code != 0:
        return code
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    areas = np.array([float(row["area_um2"]) for row in rows])
    verdict = "ok" if len(rows) >= MIN_NUCLEI else f"FEWER than the demo's bar of {MIN_NUCLEI}"
    print(f"{len(rows)} nuclei in the tissue crop, median area {np.median(areas):.1f} µm²: {verdict}")
    print(f"table: {table}; QuPath detections: {detections}; outlines: {preview}")
    return 0 if len(rows) >= MIN_NUCLEI else 1


if __name__ == "__main__":
    sys.exit(main())
