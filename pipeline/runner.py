"""Runs tiles through the model: loaded once per process, batched, under autocast, with optional flip TTA.

Dask tasks never carry the model. They carry a small ``ModelSpec``; ``get_runner(spec)`` loads the checkpoint
the first time a process needs it and shares it between that process's threads. On a GPU forward passes are
serialised while other threads read, blend and write; on a CPU each thread runs its own forward passes on its
share of the cores, which beats one forward spread over all cores for convolutions of tile size.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from tiling.normalize import Normalization

from .checkpoint import Checkpoint, ModelCard, load_checkpoint
from .devices import PRECISIONS
from .model import activation_bytes_per_tile, logits_to_probs

TTA_MODES = ("none", "flips")
#: Batch sizes tried when the batch size is left to tilewise.
CANDIDATE_BATCHES = (1, 2, 4, 8, 16, 32, 64)
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

    @classmethod
    def for_checkpoint(cls, path: str | os.PathLike[str], **settings: object) -> ModelSpec:
        path = os.path.abspath(path)
        stat = os.stat(path)
        return cls(checkpoint=path, fingerprint=f"{stat.st_size}-{stat.st_mtime_ns}", **settings)  # type: ignore[arg-type]

    @classmethod
    def for_model(cls, checkpoint: Checkpoint, **settings: object) -> ModelSpec:
        """A spec for a model already in memory (threaded runs in this process only)."""
        token = f"{MEMORY_PREFIX}{id(checkpoint.model):x}"
        with _RUNNERS_LOCK:
            _IN_MEMORY[token] = checkpoint
        return cls(checkpoint=token, fingerprint=token, **settings)  # type: ignore[arg-type]


class BatchSizer:
    """Finds the batch size that is fastest *per tile* by timing real batches of the run.

    The largest batch that fits is often not the fastest (on a CPU, batch 1 is often as fast per tile as batch
    4). All workers run the same candidate at a time, so each is timed under the run's real load (concurrent
    forwards on a CPU); each candidate gets ``SAMPLES`` timed batches and is scored by their median time per
    tile. A thread's first batch of a size is not timed: it pays one-off set-up costs and faults in the
    memory of that size's activations. Exploration stops at the first candidate clearly slower than the best
    so far. The batches are real tiles of the run, so no tile runs twice. A larger batch must beat a smaller
    one by ``MARGIN`` to be chosen: it costs memory, and on a CPU its activations are faulted in again after
    each chunk hands freed memory back (default U-Net, 4096²: batch 4 ran 6 % faster per tile than batch 1
    on its own but 3 % faster in a run, with 2.5 times the activation memory).
    """

    SAMPLES = 4
    MARGIN = 0.10

    def __init__(self, candidates: Sequence[int]) -> None:
        self.candidates = sorted(set(candidates))
        self.per_tile: dict[int, list[float]] = {c: [] for c in self.candidates}
        self._warmed: set[tuple[int, int]] = set()
        self._current = 0
        self.chosen: int | None = self.candidates[0] if len(self.candidates) == 1 else None

    def next_size(self) -> int:
        return self.chosen if self.chosen is not None else self.candidates[self._current]

    def record(self, size: int, seconds: float, thread: int | None = None) -> None:
        """Time one batch of ``size`` tiles run by ``thread`` (default: the calling thread)."""
        if self.chosen is not None:
            return
        warm_up = (threading.get_ident() if thread is None else thread, size)
        if warm_up not in self._warmed:
            self._warmed.add(warm_up)
            return
        current = self.candidates[self._current]
        if size != current:
            return  # a short batch at the end of a chunk, or a batch started before the last switch
        self.per_tile[current].append(seconds / size)
        if len(self.per_tile[current]) < self.SAMPLES:
            return
        scores = {c: float(np.median(t)) for c, t in self.per_tile.items() if len(t) >= self.SAMPLES}
        best = self._best(scores)
        if self._current == len(self.candidates) - 1 or scores[current] > 1.1 * scores[best]:
            self.chosen = best
        else:
            self._current += 1

    def _best(self, scores: dict[int, float]) -> int:
        best = min(scores)
        for c in sorted(scores):
            if scores[c] < scores[best] * (1 - self.MARGIN):
                best = c
        return best


class ModelRunner:
    """A loaded model and the means to run tiles through it."""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.device == "auto":  # decided by the worker the model lands on
            spec = replace(spec, device="cuda:0" if torch.cuda.is_available() else "cpu")
        self.spec = spec
        if spec.checkpoint.startswith(MEMORY_PREFIX):
            checkpoint = _IN_MEMORY[spec.checkpoint]
            self.model = checkpoint.model.to(spec.device).eval()
        else:
            checkpoint = load_checkpoint(spec.checkpoint, device=spec.device)
            self.model = checkpoint.model
            global LOADS
            LOADS += 1
        self.card: ModelCard = checkpoint.card
        self.device = torch.device(spec.device)
        if spec.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # On a GPU one forward at a time (they share the device anyway, and memory stays one batch); on a CPU
        # threads run forwards side by side, each with its share of the cores (see ``cpu_threads``).
        self._forward_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self.device.type == "cuda" else contextlib.nullcontext()
        )
        self._state_lock = threading.Lock()
        self.tiles_run = 0
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

    def _forward(self, batch: np.ndarray, valid: np.ndarray | None, normalization: Normalization) -> np.ndarray:
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

    def run(
        self,
        image: np.ndarray,
        valid: np.ndarray | None,
        origins: Sequence[tuple[int, int]],
        tile: int,
        normalization: Normalization,
    ) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
        """Probabilities of the tiles of ``image`` (bands, rows, cols; raw pixels) at local ``origins``.

        ``valid`` (rows, cols) marks pixels to keep; the others are set to 0 after normalisation (None: all
        valid). Yields (origins of the batch, probabilities (batch, classes, tile, tile) float32).
        """
        start = 0
        while start < len(origins):
            batch_origins, probs = self._run_batch(image, valid, origins, start, tile, normalization)
            start += len(batch_origins)
            yield batch_origins, probs

    def _run_batch(
        self,
        image: np.ndarray,
        valid: np.ndarray | None,
        origins: Sequence[tuple[int, int]],
        start: int,
        tile: int,
        normalization: Normalization,
    ) -> tuple[list[tuple[int, int]], np.ndarray]:
        while True:
            with self._state_lock:
                size = self.sizer.next_size()
            batch_origins = list(origins[start : start + size])
            batch = np.stack([image[:, y : y + tile, x : x + tile] for y, x in batch_origins])
            batch_valid = (
                None if valid is None else np.stack([valid[y : y + tile, x : x + tile] for y, x in batch_origins])
            )
            began = time.perf_counter()
            try:
                with self._forward_lock:
                    probs = self._forward(batch, batch_valid, normalization)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if size == 1:
                    raise
                with self._state_lock:
                    self.sizer = BatchSizer([c for c in self.sizer.candidates if c < size] or [1])
                continue
            with self._state_lock:
                self.sizer.record(len(batch_origins), time.perf_counter() - began)
                self.tiles_run += len(batch_origins)
            return batch_origins, probs


@contextlib.contextmanager
def cpu_threads(workers: int) -> Iterator[None]:
    """Give each of ``workers`` concurrent forward passes an equal share of the CPU cores for a run."""
    previous = torch.get_num_threads()
    set_torch_threads(max(1, available_cores() // workers))
    try:
        yield
    finally:
        set_torch_threads(previous)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity under SLURM, taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_torch_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


#: Checkpoints loaded by this process (a cluster test checks each worker loads its model once).
LOADS = 0
_RUNNERS: dict[ModelSpec, ModelRunner] = {}
_IN_MEMORY: dict[str, Checkpoint] = {}
_RUNNERS_LOCK = threading.Lock()


def get_runner(spec: ModelSpec) -> ModelRunner:
    """The process-wide runner for ``spec``, loading the checkpoint on first use."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(spec)
        if runner is None:
            runner = _RUNNERS[spec] = ModelRunner(spec)
        return runner


def release_runners() -> None:
    """Forget loaded models (frees their memory; the next run loads again)."""
    with _RUNNERS_LOCK:
        _RUNNERS.clear()
        _IN_MEMORY.clear()
