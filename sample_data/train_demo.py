"""Reproduce the committed demo model: write the training scenes, then train with the project's own command.

    python -m sample_data.train_demo

Writes sample_data/generated/train/{scene,truth}_seed{1,2}.tif (training and validation scenes; the demo scores
the seed-0 scene, which training never sees) and runs

    tilewise train --config sample_data/demo.yaml --out sample_data/demo_model.safetensors --overwrite

which also writes demo_model.metrics.csv and demo_model.curves.png beside the checkpoint.
"""

from __future__ import annotations

import sys

from pipeline.cli import main as tilewise

from .generate import HERE, write_scene

TRAIN_SIZE, VAL_SIZE = 1024, 512


def main() -> int:
    folder = HERE / "generated" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, size in ((1, TRAIN_SIZE), (2, VAL_SIZE)):
        write_scene(folder / f"scene_seed{seed}.tif", folder / f"truth_seed{seed}.tif", size, size, seed, True)
    command = [
        "train",
        "--config",
        str(HERE / "demo.yaml"),
        "--out",
        str(HERE / "demo_model.safetensors"),
        "--overwrite",
        "--threads",
        "2",
    ]
    print("tilewise " + " ".join(command), file=sys.stderr)
    return tilewise(command)


if __name__ == "__main__":
    sys.exit(main())
