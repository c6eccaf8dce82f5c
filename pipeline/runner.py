"""Runs tiles through the model: batched, under autocast, with optional flip TTA.

A runner is made once per process and model (``cache.model_cache``) and shared by the process's threads. On a
CPU several forward passes run side by side, each on its share of the cores, on the threads of a
``ForwardPool`` that every chunk task of the process feeds: no core waits while any chunk still has tiles to
run. On a GPU forward passes are serialised while other threads read, blend and write.
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

from .batch_sizer import CANDIDATE_BATCHES, BatchSizer
from .checkpoint import Checkpoint, ModelCard, load_checkpoint
from .devices import PRECISIONS, process_device, process_forward_threads
from .forward_pool import ForwardPool, Origin, TileRequest
from .model import activation_bytes_per_tile, logits_to_probs

#: ``ModelSpec.checkpoint`` of a model handed over in memory rather than as a file.
MEMORY_PREFIX = "memory:"


@dataclass(frozen=True)
class ModelSpec:
    """How to get and run a model; small and picklable so it can sit in a task graph."""

    checkpoint: str
    fingerprint: str
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    tta: str = "none"
    batch_size: int | None = None
    max_batch: int = 64
    #: The model itself, when it was handed over in memory (threaded runs in this process only); not part of
    #: the spec's identity, which ``checkpoint`` carries.
    held: Checkpoint | None = field(default=None, compare=False, repr=False)

    @classmethod
    def for_checkpoint(cls, path: str | os.PathLike[str], **settings: object) -> ModelSpec:
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
        if spec.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # On a GPU one forward at a time (they share the device anyway, and memory stays one batch), run by the
        # calling thread; on a CPU forwards run side by side on the pool's threads (see ``devices.cpu_threads``).
        self._forward_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self.device.type == "cuda" else contextlib.nullcontext()
        )
        self._pool = ForwardPool(self._next_size, self._run_request) if self.device.type == "cpu" else None
        self._state_lock = threading.Lock()
        self.tiles_run = 0
        #: CPU seconds the forward passes took on the threads that ran them (meaningful on a CPU device: a GPU
        #: forward's thread mostly waits); the benchmark divides it by a run's core-seconds.
        self.forward_cpu_seconds = 0.0
        self._norm_cache: dict[Normalization, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sizer = BatchSizer(self._candidates())

    def _candidates(self) -> list[int]:
        if self.spec.batch_size is not None:
            return [self.spec.batch_size]
        limit = self.spec.max_batch
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            per_tile = activation_bytes_per_tile(self.card.model, self.card.tile_size)
            limit = min(limit, max(1, int(0.6 * free // per_tile)))
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
        mean, inv_std = self._normalizer(normalization)
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).float()
        x = (x - mean) * inv_std
        if valid is not None:
            x *= torch.from_numpy(valid).to(self.device)[:, None]
        if self.spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.spec.precision]
        flips: list[tuple[int, ...]] = [()] if self.spec.tta == "none" else [(), (2,), (3,), (2, 3)]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            total = None
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                probs = logits_to_probs(self.model(xi))
                probs = torch.flip(probs, dims) if dims else probs
                total = probs if total is None else total + probs
            assert total is not None
            if len(flips) > 1:
                total = total / len(flips)
        return total.float().contiguous().cpu().numpy()

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

    def _run_in_caller(self, request: TileRequest) -> Iterator[tuple[list[Origin], np.ndarray]]:
        start = 0
        while start < len(request.origins):
            batch_origins, probs = self._run_batch(request, start)
            start += len(batch_origins)
            yield batch_origins, probs

    def close(self) -> None:
        """Stop the forward pool's threads (a closed runner runs nothing more)."""
        if self._pool is not None:
            self._pool.close()

    def _next_size(self) -> int:
        with self._state_lock:
            return self.sizer.next_size()

    def _run_request(self, request: TileRequest, origins: list[Origin]) -> np.ndarray:
        """Stack the tiles of ``request`` at ``origins``, run them, and report the batch's time to the sizer."""
        batch = _stacked(request.image, origins, request.tile)
        batch_valid = None if request.valid is None else _stacked(request.valid, origins, request.tile)
        began, cpu_began = time.perf_counter(), time.thread_time()
        with self._forward_lock:
            probs = self.probabilities(batch, batch_valid, request.normalization)
        with self._state_lock:
            self.sizer.record(len(origins), time.perf_counter() - began)
            self.tiles_run += len(origins)
            self.forward_cpu_seconds += time.thread_time() - cpu_began
        return probs

    def _run_batch(self, request: TileRequest, start: int) -> tuple[list[Origin], np.ndarray]:
        """The next batch of ``request`` from ``start`` on a GPU, trying smaller batches while it runs out of
        memory."""
        while True:
            batch_origins = list(request.origins[start : start + self._next_size()])
            try:
                return batch_origins, self._run_request(request, batch_origins)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if len(batch_origins) == 1:
                    raise
                with self._state_lock:
                    smaller = [c for c in self.sizer.candidates if c < len(batch_origins)]
                    self.sizer = BatchSizer(smaller or [1])


def _stacked(image: np.ndarray, origins: Sequence[Origin], tile: int) -> np.ndarray:
    """The tiles of ``image`` (..., rows, cols) at ``origins``, stacked on a new first axis. A single tile is a
    view (when it may be written: torch takes no read-only array): ``probabilities`` copies it once anyway, when it
    converts it to float."""
    if len(origins) == 1 and image.flags.writeable:
        y, x = origins[0]
        return image[np.newaxis, ..., y : y + tile, x : x + tile]
    return np.stack([image[..., y : y + tile, x : x + tile] for y, x in origins])
