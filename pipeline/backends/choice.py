"""Building an engine by name, and ``auto``: timing the installed engines on the run's first batch."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from . import Backend, candidates, check_backend
from .torch_backend import TorchBackend


@dataclass(frozen=True)
class BackendSetup:
    """What every engine needs to run a model: the model (float32, on its device), the checksum of its weights
    (the conversion cache's key), its input and how to run it."""

    model: torch.nn.Module
    weights: str
    bands: int
    tile: int
    device: torch.device
    precision: str
    dtype: torch.dtype | None
    channels_last: bool
    forward_threads: int


def build_backend(name: str, setup: BackendSetup) -> Backend:
    """Engine ``name`` (not ``auto``) for ``setup``; an optional engine converts the model (or finds it
    converted on disk)."""
    check_backend(name, setup.device.type, setup.precision)
    if name == "torch":
        return TorchBackend(setup.model, setup.device, setup.dtype, setup.channels_last)
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(setup.model, setup.weights, setup.bands, setup.tile, setup.precision)
    from .openvino_backend import OpenVinoBackend

    return OpenVinoBackend(setup.model, setup.weights, setup.bands, setup.tile, setup.precision, setup.forward_threads)


#: Timed runs of each engine on the first batch (after one untimed run that pays its set-up), interleaved.
ROUNDS = 3


def fastest_backend(setup: BackendSetup, x: torch.Tensor) -> tuple[Backend, dict[str, float]]:
    """The engine ``auto`` keeps: the one among ``candidates`` with the lowest median time on the batch ``x``
    (normalised tiles), the engines' runs interleaved so a drift of the machine's speed favours none. Returns
    it and every candidate's median seconds per tile. The timing runs' results are dropped: every tile of the
    run goes through the kept engine alone (the chunk invariance promise holds for it)."""
    names = candidates(setup.device.type, setup.precision)
    engines = [build_backend(name, setup) for name in names]
    if len(engines) == 1:
        return engines[0], {}
    for engine in engines:
        engine.probabilities(x)
    seconds: dict[str, list[float]] = {engine.name: [] for engine in engines}
    for _ in range(ROUNDS):
        for engine in engines:
            began = time.perf_counter()
            engine.probabilities(x)
            seconds[engine.name].append((time.perf_counter() - began) / len(x))
    per_tile = {name: statistics.median(times) for name, times in seconds.items()}
    best = min(engines, key=lambda engine: per_tile[engine.name])
    return best, per_tile
