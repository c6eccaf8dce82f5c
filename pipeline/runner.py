"""Runs tiles through the model: loaded once per process, batched, under autocast, with optional flip TTA.

Dask tasks never carry the model. They carry a small ``ModelSpec``; ``get_runner(spec)`` loads the checkpoint
the first time a process needs it and shares it between that process's threads. On a GPU forward passes are
serialised while other threads read, blend and write. On a CPU several forward passes run side by side, each
on its share of the cores (which beats one forward spread over all cores for convolutions of tile size), on the
threads of a ``ForwardPool`` that every chunk task of the process feeds: no core waits while any chunk still
has tiles to run, not even when the last chunk of a run is left alone or a chunk waits for its neighbour.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tiling.normalize import Normalization

from .checkpoint import Checkpoint, ModelCard, load_checkpoint
from .devices import PRECISIONS
from .model import activation_bytes_per_tile, logits_to_probs

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
    4). Candidates are compared in pairs, smallest first: the best so far against the next one, their batches
    interleaved so both are timed under the same load (a shared machine's speed can drift by several per cent
    within seconds, enough to make a candidate timed a few seconds later look 10 % faster). Each gets ``SAMPLES``
    timed batches and is scored by the median time per tile. A thread's first batch of a size is not timed: it
    pays one-off set-up costs and faults in the memory of that size's activations. Exploration stops at the
    first candidate clearly slower than the best so far. The batches are real tiles of the run, so no tile runs
    twice. A larger batch must beat a smaller one by ``MARGIN`` to be chosen: it costs memory, and on a CPU its
    activations are faulted in again whenever the heaps hand freed memory back (default U-Net, 4096²: batch 4
    ran 6 % faster per tile than batch 1 on its own but 3 % faster in a run, with 2.5 times the memory).
    """

    SAMPLES = 4
    MARGIN = 0.10
    #: A challenger this much slower than the best ends the search (larger batches will not do better).
    CLEARLY_SLOWER = 1.1

    def __init__(self, candidates: Sequence[int]) -> None:
        self.candidates = sorted(set(candidates))
        self.chosen: int | None = self.candidates[0] if len(self.candidates) == 1 else None
        self._best = self.candidates[0]
        self._challenger = 1  # index in ``candidates``
        self._per_tile: dict[int, list[float]] = {}
        self._warmed: set[tuple[int, int]] = set()

    def next_size(self) -> int:
        if self.chosen is not None:
            return self.chosen
        pair = (self._best, self.candidates[self._challenger])
        return min(pair, key=lambda size: len(self._per_tile.get(size, ())))  # alternate; a tie goes to the best

    def record(self, size: int, seconds: float, thread: int | None = None) -> None:
        """Time one batch of ``size`` tiles run by ``thread`` (default: the calling thread)."""
        if self.chosen is not None:
            return
        warm_up = (threading.get_ident() if thread is None else thread, size)
        if warm_up not in self._warmed:
            self._warmed.add(warm_up)
            return
        challenger = self.candidates[self._challenger]
        if size not in (self._best, challenger):
            return  # a short batch at the end of a chunk, or a batch started before the last switch
        self._per_tile.setdefault(size, []).append(seconds / size)
        if min(len(self._per_tile.get(c, ())) for c in (self._best, challenger)) < self.SAMPLES:
            return
        best, other = (float(np.median(self._per_tile[c])) for c in (self._best, challenger))
        if other < best * (1 - self.MARGIN):
            self._best = challenger
        if other > self.CLEARLY_SLOWER * best or self._challenger == len(self.candidates) - 1:
            self.chosen = self._best
            return
        self._challenger += 1
        self._per_tile = {}  # the next pair is timed afresh, side by side


Origin = tuple[int, int]


@dataclass(eq=False)
class TileRequest:
    """One caller's tiles: raw pixels (bands, rows, cols), what to keep, and where each tile starts."""

    image: np.ndarray
    valid: np.ndarray | None
    origins: Sequence[Origin]
    tile: int
    normalization: Normalization
    #: Lower runs first (a chunk's position in the run's order); equal priorities run in the order they came.
    priority: int = 0
    #: Tiles handed to the pool's threads so far, and batches made of them.
    taken: int = 0
    batches: int = 0
    #: (batch number, origins, probabilities or the error that stopped the batch), in the order they finish.
    results: queue.SimpleQueue[tuple[int, list[Origin], np.ndarray | BaseException]] = field(
        default_factory=queue.SimpleQueue
    )

    def take(self, size: int) -> tuple[int, list[Origin]]:
        """The next batch of at most ``size`` tiles and its number."""
        origins = list(self.origins[self.taken : self.taken + size])
        self.taken += len(origins)
        self.batches += 1
        return self.batches - 1, origins

    @property
    def exhausted(self) -> bool:
        return self.taken >= len(self.origins)


class ForwardPool:
    """Threads that run the forward passes of every caller in the process, most urgent request first.

    A chunk task that ran its own tiles would leave a core idle whenever its chunk waited for a neighbour, and
    at the end of a run, when one thread is left with the last chunk (default U-Net, 8192², two threads: one
    idle for the last 4.5 s of an 87 s run). Here a chunk task hands its tiles over and takes the
    probabilities back in order, and every thread of the pool takes the next batch of the request with the
    lowest priority number that still has tiles. Chunk tasks pass their position in the run's row-major order,
    so chunks finish in that order whatever order a scheduler starts them in: the neighbours a chunk's blend
    waits for are done first, and the throttle lets the next chunk start (and queue its tiles) while the pool
    is still busy. ``threads`` pool threads are at work at a time (see ``set_forward_threads``); the pool
    grows when asked for more and parks the threads it does not need.
    """

    def __init__(
        self, batch_size: Callable[[], int], run_batch: Callable[[TileRequest, list[Origin]], np.ndarray]
    ) -> None:
        self._batch_size = batch_size
        self._run_batch = run_batch
        self._requests: list[TileRequest] = []  # by priority, then arrival
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._active = 0
        self._closed = False

    def run(self, request: TileRequest, threads: int) -> Iterator[tuple[list[Origin], np.ndarray]]:
        """Run ``request`` on ``threads`` pool threads; yields (origins, probabilities) batch by batch."""
        with self.queued(request, threads) as results:
            yield from results

    @contextlib.contextmanager
    def queued(self, request: TileRequest, threads: int) -> Iterator[Iterator[tuple[list[Origin], np.ndarray]]]:
        """Queue ``request`` now, on ``threads`` pool threads; the value is an iterator over its (origins,
        probabilities) batch by batch. Leaving the block gives up the tiles not yet taken (a failed caller)."""
        if not request.origins:
            yield iter(())
            return
        with self._changed:
            if self._closed:
                raise RuntimeError("the forward pool is closed")
            self._active = threads
            while len(self._threads) < threads:
                thread = threading.Thread(
                    target=self._work, args=(len(self._threads),), name="tilewise-forward", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            bisect.insort(self._requests, request, key=lambda r: r.priority)  # after the equal ones
            self._changed.notify_all()
        try:
            yield self._results(request)
        finally:
            with self._changed:  # a failed or abandoned request gives up its remaining tiles
                if request in self._requests:
                    self._requests.remove(request)

    @property
    def idle(self) -> bool:
        """No queued tile is waiting for a thread (the threads may still be finishing their last batches)."""
        with self._changed:
            return not self._requests

    @staticmethod
    def _results(request: TileRequest) -> Iterator[tuple[list[Origin], np.ndarray]]:
        finished: dict[int, tuple[list[Origin], np.ndarray]] = {}
        yielded = returned = 0
        while returned < len(request.origins):
            number, origins, outcome = request.results.get()
            if isinstance(outcome, BaseException):
                raise outcome
            finished[number] = origins, outcome
            while yielded in finished:  # in batch order, so the sums do not depend on thread timing
                origins, probs = finished.pop(yielded)
                yielded += 1
                returned += len(origins)
                yield origins, probs

    def close(self) -> None:
        """Let the threads end once they run out of work (they hold the model); a later request is refused."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _work(self, index: int) -> None:
        while True:
            with self._changed:
                while index >= self._active or not self._requests:
                    if self._closed:
                        return
                    self._changed.wait()
                request = self._requests[0]
                number, origins = request.take(self._batch_size())
                if request.exhausted:
                    self._requests.pop(0)
            try:
                outcome: np.ndarray | BaseException = self._run_batch(request, origins)
            except BaseException as error:  # handed to the caller, which raises it
                outcome = error
            request.results.put((number, origins, outcome))


class ModelRunner:
    """A loaded model and the means to run tiles through it."""

    def __init__(self, spec: ModelSpec) -> None:
        spec = replace(spec, device=process_device(spec.device))
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
        # On a GPU one forward at a time (they share the device anyway, and memory stays one batch), run by the
        # calling thread; on a CPU forwards run side by side on the pool's threads (see ``cpu_threads``).
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
        with self._pool.queued(request, forward_threads()) as results:
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


#: Forward passes a CPU process runs side by side (the pool threads at work).
_FORWARD_THREADS = 1


def forward_threads() -> int:
    return _FORWARD_THREADS


def set_forward_threads(threads: int) -> None:
    global _FORWARD_THREADS
    _FORWARD_THREADS = max(1, threads)


@contextlib.contextmanager
def cpu_threads(workers: int) -> Iterator[None]:
    """Run ``workers`` forward passes side by side for a run, each on an equal share of the CPU cores."""
    previous = torch.get_num_threads(), forward_threads()
    set_torch_threads(max(1, available_cores() // workers))
    set_forward_threads(workers)
    try:
        yield
    finally:
        set_torch_threads(previous[0])
        set_forward_threads(previous[1])


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


def process_device(device: str) -> str:
    """The device a model runs on in this process: ``auto`` is decided by the process the model lands on."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return device


def runner_is_idle(spec: ModelSpec) -> bool:
    """Whether this process's runner for ``spec`` has no tiles waiting for its forward pool (a runner on a GPU
    has no pool: False)."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(spec)
    if runner is None:  # not loaded yet, so nothing is queued; a GPU runs its tiles in the caller
        return process_device(spec.device) == "cpu"
    return runner.idle


def release_runners() -> None:
    """Forget loaded models (frees their memory; the next run loads again)."""
    with _RUNNERS_LOCK:
        for runner in _RUNNERS.values():
            runner.close()
        _RUNNERS.clear()
        _IN_MEMORY.clear()
