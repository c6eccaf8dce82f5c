"""Reproduce the committed nuclei model: train it with the project's own command on ../shared/data/monuseg.

    python -m sample_data.train_nuclei

runs ``tilewise train --config configs/monuseg_nuclei.yaml --out sample_data/nuclei_model.safetensors`` (instance
masks, a boundary class and the U-Net paper's weight map, at 0.25 µm/px), which also writes
nuclei_model.metrics.csv and nuclei_model.curves.png beside the checkpoint. MoNuSeg is CC BY-NC-SA 4.0: the
weights are for non-commercial use, as the card says. ``python -m benchmarks.nuclei`` scores it on the two
images training never saw.
"""

from __future__ import annotations

import sys

from pipeline.cli import main as tilewise

from .generate import HERE

CONFIG = HERE.parent / "configs" / "monuseg_nuclei.yaml"
MODEL = HERE / "nuclei_model.safetensors"


def main() -> int:
    command = ["train", "--config", str(CONFIG), "--out", str(MODEL), "--overwrite", "--threads", "2"]
    print("tilewise " + " ".join(command), file=sys.stderr)
    return tilewise(command)


if __name__ == "__main__":
    sys.exit(main())
