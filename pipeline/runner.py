"""Runs tiles through the model: batched, normalised on the device, with optional flip TTA; the forward pass
itself is the engine's (``backends``: torch under autocast, ONNX Runtime or OpenVINO), made on the first batch.

A runner is made once per process and model (``cache.model_cache``) and shared by the process's threads. On a
CPU several forward passes run side by side, each on its share of the cores, on the threads of a
``ForwardPool`` that every chunk task of the process feeds: no core waits while any chunk still has tiles to
run. On a GPU the calling thread runs its own tiles, one forward pass on the device at a time, while other
threads read, blend and write; each batch is staged in pinned memory and copied on a side stream while the
previous forward pass runs (``staging``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tiling.normalize import Normalization
from tiling.storage import StoragePath, is_remote

from .backends import Backend
from .backends.choice import BackendSetup, build_backend, fastest_backend
from .batch_sizer import CANDIDATE_BATCHES, BatchSizer
from .checkpoint import Checkpoint, ModelCard, load_checkpoint, weights_fingerprint
from .checkpoint_download import remote_digest
from .devices import PRECISIONS, available_cores, process_device, process_forward_threads, set_torch_threads
from .forward_pool import ForwardPool, Origin, TileRequest
from .layout import tile_input
from .model import activation_bytes_per_tile
from .staging import BatchStager, StagedBatch

#: ``ModelSpec.checkpoint`` of a model handed over in memory rather than as a file.
MEMORY_PREFIX = "memory:"
#: Share of a GPU's free memory the activations of a batch may take.
GPU_MEMORY_SHARE = 0.6


@dataclass(frozen=True)
class ModelSpec:
    """How to get and run a model; small and picklable so it can sit in a task graph."""

    checkpoint: str
    fingerprint: str
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    tta: str = "none"
    #: The engine (``pipeline.backends``): torch, onnxruntime, openvino, or auto (chosen on the first batch).
    backend: str = "torch"
    batch_size: int | None = None
    max_batch: int = 64
    #: The model itself, when it was handed over in memory (threaded runs in this process only); not part of
    #: the spec's identity, which ``checkpoint`` carries.
    held: Checkpoint | None = field(default=None, compare=False, repr=False)

    @classmethod
    def for_checkpoint(cls, path: str | os.PathLike[str], **settings: object) -> ModelSpec:
        if is_remote(path):  # identified by its weights: each worker downloads it once
            url = os.fspath(path)
            return cls(checkpoint=url, fingerprint=remote_digest(StoragePath(url)), **settings)  # type: ignore[arg-type]
        path = os.path.abspath(path)
        stat = os.stat(path)
        return cls(checkpoint=path, fingerprint=f"{stat.st_size}-{stat.st_mtime_ns}", **settings)  # type: ignore[arg-type]

    @classmethod
    def for_model(cls, checkpoint: Checkpoint, **settings: object) -> ModelSpec:
        """A spec for a model already in memory (threaded runs in this process only)."""
        token = f"{MEMORY_PREFIX}{id(checkpoint.model):x}"
        return cls(checkpoint=token, fingerprint=token, held=checkpoint, **settings)  # type: ignore[arg-type]


class ModelRunner:
    """A loaded model and the means to run tiles through it."""

    def __init__(self, spec: ModelSpec) -> None:
        spec = replace(spec, device=process_device(spec.device))
        self.spec = spec
        if spec.held is not None:
            checkpoint = spec.held
            self.model = checkpoint.model.to(spec.device).eval()
        else:
            checkpoint = load_checkpoint(spec.checkpoint, device=spec.device)
            self.model = checkpoint.model
        self.card: ModelCard = checkpoint.card
        self.device = torch.device(spec.device)
        #: The engine by tile size, made on a tile size's first batch (``auto`` times the candidates on it): an
        #: optional engine's converted model has the tile's shape.
        self._backends: dict[int, Backend] = {}
        self._backend_lock = threading.Lock()
        #: ``auto``'s timings on the first batch: median seconds per tile of each engine it tried.
        self.backend_timings: dict[str, float] = {}
        on_gpu = self.device.type == "cuda"
        # On a GPU one forward at a time (they share the device anyway, and memory stays one batch), run by the
        # calling thread; on a CPU forwards run side by side on the pool's threads.
        self._forward_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if on_gpu else contextlib.nullcontext()
        )
        self._pool = ForwardPool(self._next_size, self._run_request) if self.device.type == "cpu" else None
        if self._pool is not None:
            process_forward_threads().attach(self._pool)
        self._state_lock = threading.Lock()
        self.tiles_run = 0
        #: CPU seconds the forward passes took on the threads that ran them (meaningful on a CPU device: a GPU
        #: forward's thread mostly waits); the benchmark divides it by a run's core-seconds.
        self.forward_cpu_seconds = 0.0
        #: Seconds the GPU spent on forward passes (CUDA events around each; 0 elsewhere): the GPU idles for
        #: the rest of a run.
        self.forward_gpu_seconds = 0.0
        self._norm_cache: dict[Normalization, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sizer = BatchSizer(self._candidates())
        self._stager = BatchStager(self.device, max(self.sizer.candidates)) if on_gpu else None

    def _candidates(self) -> list[int]:
        if self.spec.batch_size is not None:
            return [self.spec.batch_size]
        limit = self.spec.max_batch
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            size = tile_input(self.card.model, self.card.tile_size).input_size(self.card.tile_size)
            per_tile = activation_bytes_per_tile(self.card.model, size)
            limit = min(limit, max(1, int(GPU_MEMORY_SHARE * free // per_tile)))
        return [c for c in CANDIDATE_BATCHES if c <= limit] or [1]

    def _normalizer(self, normalization: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._norm_cache.get(normalization)
        if cached is None:
            mean = torch.tensor(normalization.mean, dtype=torch.float32, device=self.device)[None, :, None, None]
            inv_std = 1.0 / torch.tensor(normalization.std, dtype=torch.float32, device=self.device)
            cached = self._norm_cache[normalization] = (mean, inv_std[None, :, None, None])
        return cached

    def probabilities(self, batch: np.ndarray, valid: np.ndarray | None, normalization: Normalization) -> np.ndarray:
        """Probabilities (batch, classes, T, T) of raw tiles (batch, bands, T, T), normalised on the device."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        mask = None if valid is None else torch.from_numpy(valid).to(self.device)
        return self.forward(x, mask, normalization).cpu().numpy()

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, normalization: Normalization) -> torch.Tensor:
        """Probabilities (float32, contiguous, on the device) of raw tiles ``x`` (batch, bands, T, T) on the
        device, normalised there; ``valid`` (batch, T, T) zeroes the pixels to leave out after normalisation."""
        mean, inv_std = self._normalizer(normalization)
        x = (x.float() - mean) * inv_std
        if valid is not None:
            x *= valid[:, None]
        backend = self.backend(x)
        flips: list[tuple[int, ...]] = [()] if self.spec.tta == "none" else [(), (2,), (3,), (2, 3)]
        with torch.inference_mode():
            total = None
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                probs = backend.probabilities(xi)
                probs = torch.flip(probs, dims) if dims else probs
                total = probs if total is None else total + probs
            assert total is not None
            if len(flips) > 1:
                total = total / len(flips)
        return total.float().contiguous()

    @property
    def backend_name(self) -> str | None:
        """The engine that ran the latest tile size's tiles (None before the first batch)."""
        with self._backend_lock:
            return next((b.name for b in reversed(self._backends.values())), None)

    def backend(self, x: torch.Tensor) -> Backend:
        """The engine, made the first time (converting the model for an optional engine, or finding it converted
        on disk); ``auto`` times the candidates on ``x``, the first batch of normalised tiles."""
        tile = int(x.shape[-1])
        with self._backend_lock:
            backend = self._backends.get(tile)
            if backend is None:
                setup = BackendSetup(
                    model=self.model,
                    weights=weights_fingerprint(self.model) if self.spec.backend != "torch" else "",
                    bands=self.card.model.in_channels,
                    tile=tile,
                    device=self.device,
                    precision=self.spec.precision,
                    dtype=PRECISIONS[self.spec.precision],
                    channels_last=self.spec.channels_last,
                    forward_threads=process_forward_threads().count if self._pool is not None else 1,
                )
                if self.spec.backend == "auto":
                    backend, self.backend_timings = fastest_backend(setup, x)
                else:
                    backend = build_backend(self.spec.backend, setup)
                self._backends[tile] = backend
            return backend

    @contextlib.contextmanager
    def queued(
        self,
        image: np.ndarray,
        valid: np.ndarray | None,
        origins: Sequence[Origin],
        tile: int,
        normalization: Normalization,
        priority: int = 0,
    ) -> Iterator[Iterator[tuple[list[Origin], np.ndarray]]]:
        """Probabilities of the tiles of ``image`` (bands, rows, cols; raw pixels) at local ``origins``.

        ``valid`` (rows, cols) marks pixels to keep; the others are set to 0 after normalisation (None: all
        valid). The value of the block is an iterator over (origins of the batch, probabilities (batch, classes,
        tile, tile) float32) in the order of ``origins``. On a CPU the tiles are queued for the forward pool on
        entering the block, so the caller can read more of its input while they run, and callers with a lower
        ``priority`` get the cores first; leaving the block gives up the tiles not yet run. On a GPU the caller
        runs them as it iterates.
        """
        request = TileRequest(image, valid, origins, tile, normalization, priority)
        if self._pool is None:
            yield self._run_in_caller(request)
            return
        with self._pool.queued(request, process_forward_threads().count) as results:
            yield results

    @property
    def idle(self) -> bool:
        """Whether the forward pool has no tiles waiting (always False without a pool: the caller runs them)."""
        return self._pool is not None and self._pool.idle

    def close(self) -> None:
        """Stop the forward pool's threads once they have run the tiles queued (a closed runner runs nothing
        more), and let go of the pinned buffers."""
        if self._pool is not None:
            self._pool.close()
        if self._stager is not None:
            self._stager.close()

    def _next_size(self) -> int:
        with self._state_lock:
            return self.sizer.next_size()

    def _record(self, tiles: int, seconds: float, cpu_seconds: float, gpu_seconds: float = 0.0) -> None:
        with self._state_lock:
            self.sizer.record(tiles, seconds)
            self.tiles_run += tiles
            self.forward_cpu_seconds += cpu_seconds
            self.forward_gpu_seconds += gpu_seconds

    def _run_request(self, request: TileRequest, origins: list[Origin]) -> np.ndarray:
        """Stack the tiles of ``request`` at ``origins``, run them, and report the batch's time to the sizer."""
        batch = _stacked(request.image, origins, request.tile)
        batch_valid = None if request.valid is None else _stacked(request.valid, origins, request.tile)
        # A thread's OpenMP team keeps the size it had when the thread first ran torch: a pool thread that served
        # a run of one forward thread would otherwise run two-core passes side by side with another's.
        set_torch_threads(max(1, available_cores() // process_forward_threads().count))
        began, cpu_began = time.perf_counter(), time.thread_time()
        with self._forward_lock:
            probs = self.probabilities(batch, batch_valid, request.normalization)
        self._record(len(origins), time.perf_counter() - began, time.thread_time() - cpu_began)
        return probs

    def _stage(self, request: TileRequest, start: int, size: int) -> StagedBatch:
        """The batch of ``request`` from ``start`` of at most ``size`` tiles, on its way to the GPU."""
        assert self._stager is not None
        origins = list(request.origins[start : start + size])
        return self._stager.stage(origins, request.tile, request.image, request.valid)

    def _run_in_caller(self, request: TileRequest) -> Iterator[tuple[list[Origin], np.ndarray]]:
        """Run ``request`` on the GPU batch by batch. While the GPU runs a batch, the next one is stacked into a
        pinned buffer and its copy queued on the side stream; a batch that runs out of memory is retried in
        smaller batches."""
        total = len(request.origins)
        start, staged = 0, None
        while start < total:
            size = len(staged.origins) if staged is not None else min(self._next_size(), total - start)
            try:
                batch, staged = staged or self._stage(request, start, size), None
                began, cpu_began = time.perf_counter(), time.thread_time()
                with self._forward_lock:
                    busy = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    x, *valid = batch.tensors()
                    busy[0].record()
                    probs = self.forward(x, valid[0] if valid else None, request.normalization)
                    busy[1].record()
                    if start + size < total:  # copied while the GPU runs this batch
                        staged = self._stage(request, start + size, self._next_size())
                    result = probs.cpu().numpy()
                seconds, cpu_seconds = time.perf_counter() - began, time.thread_time() - cpu_began
                self._record(size, seconds, cpu_seconds, busy[0].elapsed_time(busy[1]) / 1000)
            except torch.cuda.OutOfMemoryError:
                batch = staged = probs = None  # let go of their memory before the cache is emptied
                torch.cuda.empty_cache()
                if size == 1:
                    raise
                with self._state_lock:
                    smaller = [c for c in self.sizer.candidates if c < size]
                    self.sizer = BatchSizer(smaller or [1])
                continue
            start += size
            yield batch.origins, result


def _stacked(image: np.ndarray, origins: Sequence[Origin], tile: int) -> np.ndarray:
    """The tiles of ``image`` (..., rows, cols) at ``origins``, stacked on a new first axis. A single tile is a
    view (when it may be written: torch takes no read-only array): ``probabilities`` copies it once anyway, when it
    converts it to float."""
    if len(origins) == 1 and image.flags.writeable:
        y, x = origins[0]
        return image[np.newaxis, ..., y : y + tile, x : x + tile]
    return np.stack([image[..., y : y + tile, x : x + tile] for y, x in origins])
