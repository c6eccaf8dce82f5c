"""Planning a run within a memory budget: chunk size and how many chunks are in flight at once.

Peak memory is set by the chunk size and the number of chunks in flight, never by the raster's size (the terms
are in ``memory_model``); the only thing that grows with the raster is the strip of tile overhangs waiting for
the next row of chunks (``width × overhang``). The chunk is the smallest that keeps the run at full speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from tiling.errors import OptionError
from tiling.grid import TileGrid
from tiling.sum_buffers import SUM_BUFFERS

from .memory_model import ChunkCost, ChunkShape, ChunkSpeed, MemoryEstimate

#: Default memory limit as a fraction of the memory available when the run starts.
DEFAULT_FRACTION = 0.6
#: Chunks are multiples of the output's 256-pixel TIFF blocks.
CHUNK_QUANTUM = 256
MAX_AUTO_CHUNK = 4096
CHUNKS_PER_WORKER = 4

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int | float) -> int:
    """Bytes from ``4GB``, ``512MiB``, ``2g``, ``1000000``; a number below 1 is a fraction of free memory."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
        return available_memory_fraction(value) if 0 < value < 1 else int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if match is None:
        raise OptionError(f"cannot read memory size {text!r} (examples: 4GB, 512MB, 0.5 for half of free RAM)")
    value = float(match.group(1))
    if not match.group(2) and not match.group(3) and 0 < value < 1:
        return available_memory_fraction(value)
    size = int(value * _UNITS[match.group(2)])
    if size <= 0:
        raise OptionError(f"memory limit must be positive, got {text!r}")
    return size


def available_memory_fraction(fraction: float) -> int:
    return int(psutil.virtual_memory().available * fraction)


@functools.cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """A glibc function by name (None on a C library without it, e.g. macOS's)."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


#: glibc ``mallopt`` parameters and the values a run sets (see ``keep_freed_memory``).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = 1024 * 2**20
TOP_PAD = 256 * 2**20


@functools.cache
def keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of unmapping it after every forward pass (once per process).

    By default an allocation above a sliding threshold (at most 32 MiB) gets its own ``mmap`` and a freed heap
    top is trimmed, so a CPU forward pass faults its activations in anew each time: on the 4096² model-bound
    benchmark 2.5 M page faults, 8 s of system time in a 27 s run (0.4 M and 1.8 s in 23 s with these values).
    Larger thresholds keep that memory in the heaps for the next batch (``HeapGuard`` hands it back where the
    process outgrows its working set). Heaps are also capped at one per two cores (glibc's default is eight
    per core): forward threads allocate the probabilities that chunk threads free, and with a heap per thread
    each kept its own free pieces (pipeline-bound benchmark, 8192², two runs of three processes: peak RSS 641–714 MiB
    with two heaps, 673–698 MiB without; single processes vary by ±40 MiB). Call it before the run's threads
    start; glibc only, elsewhere a no-op.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        mallopt(M_TOP_PAD, TOP_PAD)
        mallopt(M_ARENA_MAX, max(2, (os.cpu_count() or 1) // 2))


def release_free_memory() -> None:
    """Hand the free memory the process keeps back to the OS: the chunk sums' free mappings, and what the C
    allocator's heaps hold free (glibc only)."""
    SUM_BUFFERS.release()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


#: How far a local run's resident memory may outgrow its working set before a written chunk trims the heaps.
HEAP_ALLOWANCE = 128 * 2**20


class HeapGuard:
    """Trims the heaps after a written chunk only when the process has outgrown its working set.

    The working set is what the process holds once its first chunk is written (model, forward passes, chunks
    in flight); a later chunk trims only when the process holds more than that plus ``allowance``, or more
    than the plan's ``ceiling``. What a trim cannot hand back is in use, and the working set rises to it, so
    the heaps keep at most about ``allowance`` of free memory and a process that needs more is not trimmed in
    vain after every chunk.

    Trimming after every chunk cost more than it saved: every trim hands back memory that the next chunk and
    the next forward passes fault in again (8192² model-bound, two runs each: 136 000–182 000 page faults and
    2.0–2.4 s of system time with a trim per chunk, 10 000–29 000 and 0.9 s without; pipeline-bound 8192² 3.0 s
    instead of 3.8 s). Never trimming lets the heaps' free pieces grow with the number of chunks. A 40 000²
    slide (400 chunks, 96 read; one run each): a trim per chunk 386 s and 847 MiB at peak; never 360 s and
    938 MiB; this guard 360 s, 879 MiB and 75 trims (without raising the working set after a trim: 381 s,
    858 MiB, 298 trims). The core benchmark's 4096² and 8192² scenes (4 and 16 chunks, one run each) did not
    trim. One guard per local run: its state is the process's, so it never travels to cluster workers, which
    trim after every chunk.
    """

    def __init__(self, allowance: int = HEAP_ALLOWANCE, ceiling: int | None = None) -> None:
        self.allowance = allowance
        self.ceiling = ceiling
        self.working_set: int | None = None
        self.trims = 0
        self._lock = threading.Lock()

    def chunk_written(self) -> None:
        held = process_memory()
        with self._lock:
            if self.working_set is None:
                self.working_set = held
                return
            limit = self.working_set + self.allowance
            if self.ceiling is not None:
                limit = min(limit, self.ceiling)
            if held <= limit:
                return
            self.trims += 1
        release_free_memory()
        in_use = process_memory()  # what the trim could not hand back is in use: allow for it from now on
        with self._lock:
            self.working_set = max(self.working_set or 0, in_use)


def process_memory() -> int:
    """Resident memory of this process now (the interpreter, torch and the loaded model)."""
    return psutil.Process().memory_info().rss


@dataclass(frozen=True)
class ResourcePlan:
    """How a run fits its memory budget: the chunk size, the chunks in flight and what the run holds at peak."""

    chunk: int
    workers: int
    memory_limit: int
    estimate: MemoryEstimate

    @property
    def estimated_peak(self) -> int:
        return self.estimate.peak

    @property
    def per_chunk(self) -> int:
        return self.estimate.per_chunk

    @property
    def gdal_cache_mb(self) -> int:
        """GDAL's block cache for the run (its default, 5 % of RAM, would grow with the raster)."""
        return gdal_cache_bytes(self.memory_limit) // 2**20


def gdal_cache_bytes(memory_limit: int) -> int:
    """Windows are read once and chunks are written block-aligned, so a small block cache is enough; a large
    one only fills up with blocks that are never touched again, in proportion to the raster."""
    return int(min(64 * 2**20, max(16 * 2**20, 0.02 * memory_limit)))


def default_chunk(tile: int) -> int:
    """The largest chunk planned: big enough that re-reading tile borders costs little (8 tiles), within
    1024…4096 px."""
    target = max(1024, min(MAX_AUTO_CHUNK, 8 * tile))
    return math.ceil(target / CHUNK_QUANTUM) * CHUNK_QUANTUM


def balanced_sizes(sizes: list[int], grid: TileGrid, workers: int) -> list[int]:
    """Candidate chunk sizes (ascending) without those too large to give every worker ``CHUNKS_PER_WORKER``
    chunks, unless that would take away more than the upper half of the sizes.

    With few chunks per worker a model-bound run ends with idle workers waiting for the last, unevenly sized
    chunks (at 4096², 2048-px chunks hold 121, 110, 110 and 100 tiles: two workers get about 231 and 210).
    """
    floor = sizes[-1] // 2
    for i in range(len(sizes) - 1, -1, -1):
        if sizes[i] < floor:
            break
        if math.ceil(grid.height / sizes[i]) * math.ceil(grid.width / sizes[i]) >= CHUNKS_PER_WORKER * workers:
            return sizes[: i + 1]
    return sizes


@dataclass(frozen=True)
class ModelMemory:
    """What the model adds to a run: its weights (once), and what each forward thread holds for a batch (on a
    CPU its activations, on a GPU the host-side buffers of a batch)."""

    weights: int
    per_forward: int


def plan_resources(
    grid: TileGrid,
    cost: ChunkCost,
    model: ModelMemory,
    speed: ChunkSpeed | None = None,
    memory_limit: int | None = None,
    chunk: int | None = None,
    workers: int | None = None,
    baseline: int | None = None,
    balance: bool = True,
    read_cache: int = 0,
) -> ResourcePlan:
    """Pick the chunk size and chunks in flight for a run within ``memory_limit`` (bytes for the whole process).

    The chunk is the smallest that keeps the run at full speed (``speed``: its halo and per-chunk work stay
    a small share of its own work, and it gives the forward threads full batches), so memory does not grow
    with the raster; without ``speed`` (the run's speed is the pipeline's) the largest, ``default_chunk``. When
    that does not fit, smaller chunks, then fewer chunks in flight. ``baseline`` is the memory the process
    already holds (defaults to its current resident size). ``balance``: the model's work sets the run's length
    and the workers are separate processes, so chunks are small enough to share it evenly
    (``balanced_sizes``). ``read_cache``: what the process keeps of a remote input's fetched bytes.
    """
    limit = memory_limit if memory_limit is not None else available_memory_fraction(DEFAULT_FRACTION)
    base = process_memory() if baseline is None else baseline
    cpus = os.cpu_count() or 1
    if chunk is not None:
        sizes = [chunk]
    else:
        sizes = list(range(CHUNK_QUANTUM, default_chunk(grid.tile) + 1, CHUNK_QUANTUM))
        if balance:
            sizes = balanced_sizes(sizes, grid, workers or cpus)
    shapes = {size: ChunkShape.of(grid, size) for size in sizes}
    preferred = sizes[-1]
    if speed is not None:
        preferred = next((size for size in sizes if speed.full_speed(shapes[size])), sizes[-1])
    smaller = [size for size in reversed(sizes) if size <= preferred]

    def estimate(size: int, in_flight: int) -> MemoryEstimate:
        shape = shapes[size]
        per_chunk = cost.per_chunk(shape.extent, shape.chunk)
        return MemoryEstimate(
            baseline=base,
            model=model.weights,
            forward_threads=in_flight,
            per_forward=model.per_forward,
            chunks_in_flight=in_flight,
            per_chunk=per_chunk,
            overhangs=cost.overhang_row(grid.width, shape.overhang[0]),
            gdal_cache=gdal_cache_bytes(limit),
            assembly=shape.chunk[0] * shape.chunk[1] * cost.output_bytes,
            free_heap=HEAP_ALLOWANCE,
            read_cache=read_cache,
        )

    def wanted(size: int) -> int:
        return workers if workers is not None else min(cpus, shapes[size].n_chunks)

    # First the preferred chunk, then smaller ones, with every worker busy (not below 512 px just for
    # parallelism); then the largest that fits at all with fewer workers.
    for size in smaller:
        if size < min(512, smaller[0]):
            break
        plan = estimate(size, wanted(size))
        if plan.peak <= limit:
            return ResourcePlan(size, wanted(size), limit, plan)
    for size in smaller:
        for in_flight in range(wanted(size) - 1, 0, -1):
            plan = estimate(size, in_flight)
            if plan.peak <= limit:
                return ResourcePlan(size, in_flight, limit, plan)
    need = estimate(smaller[-1], 1).peak
    raise OptionError(
        f"memory limit {limit / 2**20:.0f} MiB is too small for this run: it needs at least {need / 2**20:.0f} MiB "
        f"(chunk {smaller[-1]} px, one chunk in flight); raise --memory-limit or lower --chunk/--batch-size"
    )
