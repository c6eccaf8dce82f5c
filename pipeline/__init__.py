"""tilewise's model, inference graph and command line.

The Python API is what the CLI calls::

    from pipeline import predict, train, load_checkpoint, build_model
    report = predict("scene.tif", "mask.tif", model="model.safetensors", tile=256, output_kind="both")
    trained = train(images=["scene.tif"], masks=["truth.tif"], out="model.safetensors", epochs=10)

The names are imported on first use, so that ``tilewise --help`` and option errors do not wait for torch
(about 2 s) and dask to load.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# OpenMP threads that wait for work sleep instead of spinning. Every thread that runs torch ops has a team of its
# own (the forward pool's threads, the chunk tasks' threads, the main thread): spinning teams took the cores from
# the ones at work, and a warm CPU run spent up to 8 times the CPU of a cold one (benchmarks/README.md). Read by
# libgomp when torch loads, so it must be set before the first ``import torch``; OMP_WAIT_POLICY=active restores
# spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, ModelCard, load_checkpoint, read_card, save_checkpoint
    from .model import UNet, UNetConfig, build_model
    from .options import PredictOptions
    from .prediction import PredictReport, predict, predict_array
    from .training import TrainOptions, TrainReport, train

#: Each public name and the submodule that defines it.
_SOURCES = {
    "Checkpoint": ".checkpoint",
    "ModelCard": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "read_card": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "UNet": ".model",
    "UNetConfig": ".model",
    "build_model": ".model",
    "PredictOptions": ".options",
    "PredictReport": ".prediction",
    "predict": ".prediction",
    "predict_array": ".prediction",
    "TrainOptions": ".training",
    "TrainReport": ".training",
    "train": ".training",
}

__all__ = [
    "Checkpoint",
    "ModelCard",
    "PredictOptions",
    "PredictReport",
    "TrainOptions",
    "TrainReport",
    "UNet",
    "UNetConfig",
    "build_model",
    "load_checkpoint",
    "predict",
    "predict_array",
    "read_card",
    "save_checkpoint",
    "train",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
