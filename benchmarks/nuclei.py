"""Nuclei benchmark: a nuclei model's objects on MoNuSeg images it never saw, against their instance labels.

    python -m benchmarks.nuclei [--model sample_data/nuclei_model.safetensors] [--workdir /tmp/tilewise-nuclei]

For each held-out image (configs/monuseg_nuclei.yaml trains on the other six), ``predict`` writes the labels and
the instances (read at the model's 0.25 µm/px; the PNGs state no pixel size, so ``input_mpp`` declares it), and
prints per image: AJI, object F1 at IoU ≥ 0.5, Dice and the count error (``pipeline.training.instance_metrics``)
of three ways to get objects:

- ``instances``: tilewise's objects (seeds of the nucleus class, the boundary class given back to them);
- ``components``: the 4-connected regions of the same model's nucleus map (nucleus or boundary), without
  separating touching nuclei;
- ``true mask, components``: the 4-connected regions of the *true* nucleus mask: what connected components
  can do at best.

Needs ../shared/data/monuseg. Anchors on MoNuSeg (Kumar test set, GPU, hours of training): U-Net about 0.55
AJI, HoVer-Net about 0.62.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import zarr
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "monuseg_nuclei.yaml"
DATA = ROOT.parent / "shared" / "data" / "monuseg"
HELD_OUT = ("TCGA-38-6178-01Z-00-DX1", "TCGA-E2-A14V-01Z-00-DX1")
MPP = 0.25
CROSS = ndimage.generate_binary_structure(2, 1)


def truth_of(image: str) -> np.ndarray:
    """The true instance map of one image (0: background)."""
    return tifffile.imread(DATA / "instances" / f"{image}.tif").astype(np.int64)


def objects_of(image: str, model: Path, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model's instance map (0: no object, as in the truth) and its nucleus map (nucleus or boundary) for
    one image."""
    from pipeline import predict
    from tiling.writers.encode import NODATA_UINT32

    out = workdir / f"{image}.zarr"
    predict(DATA / "images" / f"{image}.png", out, model, input_mpp=MPP, output_kind="labels,instances", overwrite=True)
    group = zarr.open_group(str(out), mode="r")
    labels = np.asarray(group["labels"][:])
    instances = np.asarray(group["instances"][:])
    instances = np.where(instances == NODATA_UINT32, 0, instances).astype(np.int64)  # nodata: no object
    return instances, (labels >= 1) & (labels != 255)


def main() -> None:
    from pipeline import read_card
    from pipeline.training.instance_metrics import score_objects

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "sample_data" / "nuclei_model.safetensors")
    parser.add_argument("--images", nargs="+", default=list(HELD_OUT))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-nuclei")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    card = read_card(args.model)
    print(f"model {args.model}: {card.model.base_width} wide, depth {card.model.depth}, {card.info.get('epochs')} "
          f"epochs (best {card.info.get('epoch')}), trained at {card.pixel_size_um} µm/px")  # fmt: skip
    print(f"{'image':26s} {'method':24s} {'AJI':>6s} {'F1@0.5':>7s} {'Dice':>6s} {'count':>11s} {'error':>6s}")
    totals: dict[str, list[tuple[float, float, float, float]]] = {}
    for image in args.images:
        truth = truth_of(image)
        instances, nucleus = objects_of(image, args.model, args.workdir)
        ways = {
            "instances": instances,
            "components": ndimage.label(nucleus, structure=CROSS)[0],
            "true mask, components": ndimage.label(truth > 0, structure=CROSS)[0],
        }
        for name, predicted in ways.items():
            s = score_objects(truth, predicted)
            totals.setdefault(name, []).append((s.aji, s.f1, s.dice, s.count_error))
            print(
                f"{image:26s} {name:24s} {s.aji:6.3f} {s.f1:7.3f} {s.dice:6.3f} "
                f"{s.predicted_count:5d}/{s.true_count:<5d} {s.count_error:6.3f}"
            )
    print("\nmean over the images")
    for name, rows in totals.items():
        aji, f1, dice, error = np.mean(rows, axis=0)
        print(f"  {name:24s} AJI {aji:.3f}  F1@0.5 {f1:.3f}  Dice {dice:.3f}  count error {error:.3f}")


if __name__ == "__main__":
    main()
