"""Planning a run within a memory budget: chunk size and how many chunks are in flight at once.

Peak memory is set by the chunk size and the number of chunks in flight, never by the raster's size: each
chunk in flight holds its input window, its accumulators and its output; the only thing that grows with the
raster is the strip of tile overhangs waiting for the next row of chunks (``width × tile``).
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
    """Hand the memory that the C allocator's heaps hold free back to the OS (glibc only, elsewhere a no-op)."""
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
class ChunkCost:
    """Bytes a run needs, from the raster's bands and the model's classes."""

    bands: int
    classes: int
    itemsize: int
    #: Pixels a tile's input is wider than its output (a valid model's context on both sides; 0 for 'same').
    context: int = 0

    def per_chunk(self, chunk: int, tile: int) -> int:
        """Bytes held by one chunk in flight (input window, accumulators, blended and encoded output)."""
        extent = (chunk + tile) ** 2
        read = (chunk + tile + self.context) ** 2
        window = read * (self.bands * (self.itemsize + 4) + 1) + extent * 4 * (self.classes + 1)
        output = chunk * chunk * (8 * (self.classes + 1) + 1 + 4 * self.classes)
        return window + output

    def overhang_strip(self, width: int, tile: int) -> int:
        """Tile overhangs waiting for the next row of chunks."""
        return 2 * width * tile * 4 * (self.classes + 1)


@dataclass(frozen=True)
class ResourcePlan:
    """How a run fits its memory budget."""

    chunk: int
    workers: int
    memory_limit: int
    per_chunk: int
    per_worker: int
    fixed: int

    @property
    def estimated_peak(self) -> int:
        # One chunk more than the workers: a finished chunk waiting for its blend (see graph.build_graph).
        return self.fixed + self.workers * (self.per_chunk + self.per_worker) + self.per_chunk

    @property
    def gdal_cache_mb(self) -> int:
        """GDAL's block cache for the run (its default, 5 % of RAM, would grow with the raster)."""
        return gdal_cache_bytes(self.memory_limit) // 2**20


def gdal_cache_bytes(memory_limit: int) -> int:
    """Windows are read once and chunks are written block-aligned, so a small block cache is enough; a large
    one only fills up with blocks that are never touched again, in proportion to the raster."""
    return int(min(64 * 2**20, max(16 * 2**20, 0.02 * memory_limit)))


def default_chunk(tile: int) -> int:
    """A chunk big enough that re-reading tile borders costs little (8 tiles), within 1024…4096 px."""
    target = max(1024, min(MAX_AUTO_CHUNK, 8 * tile))
    return math.ceil(target / CHUNK_QUANTUM) * CHUNK_QUANTUM


def balanced_first(sizes: list[int], grid: TileGrid, workers: int) -> list[int]:
    """Candidate chunk sizes, largest first, but starting at the largest that gives every worker
    ``CHUNKS_PER_WORKER`` chunks when that costs less than halving the default.

    With few chunks per worker a model-bound run ends with idle workers waiting for the last, unevenly sized
    chunks (at 4096², 2048-px chunks hold 121, 110, 110 and 100 tiles: two workers get about 231 and 210).
    """
    floor = sizes[0] // 2
    for i, size in enumerate(sizes):
        if size < floor:
            break
        if math.ceil(grid.height / size) * math.ceil(grid.width / size) >= CHUNKS_PER_WORKER * workers:
            return sizes[i:]
    return sizes


def plan_resources(
    grid: TileGrid,
    cost: ChunkCost,
    model_bytes: int,
    memory_limit: int | None = None,
    chunk: int | None = None,
    workers: int | None = None,
    baseline: int | None = None,
    worker_bytes: int = 0,
    balance: bool = True,
) -> ResourcePlan:
    """Pick the chunk size and chunks in flight that fit ``memory_limit`` (bytes for the whole process).

    ``model_bytes`` is what the model holds once (weights; on a GPU its host-side buffers); ``worker_bytes``
    what each worker needs besides its chunk (on a CPU, the activations of its batches); ``baseline`` the
    memory the process already holds (defaults to its current resident size). ``balance``: the model's work
    sets the run's length, so chunks are made small enough to share it evenly among the workers
    (``balanced_first``); otherwise reading, blending and writing do, and fewer, larger chunks cost less.
    """
    limit = memory_limit if memory_limit is not None else available_memory_fraction(DEFAULT_FRACTION)
    base = process_memory() if baseline is None else baseline
    cpus = os.cpu_count() or 1
    fixed = base + model_bytes + cost.overhang_strip(grid.width, grid.tile) + gdal_cache_bytes(limit)
    if chunk is not None:
        sizes = [chunk]
    else:
        sizes = list(range(default_chunk(grid.tile), CHUNK_QUANTUM - 1, -CHUNK_QUANTUM))
        if balance:
            sizes = balanced_first(sizes, grid, workers or cpus)
    # First the largest chunk that keeps every worker busy (not below 512 px just for parallelism), then the
    # largest that fits at all with fewer workers.
    for full_parallelism in (True, False):
        for size in sizes:
            if full_parallelism and size < min(512, sizes[0]):
                break
            n_chunks = math.ceil(grid.height / size) * math.ceil(grid.width / size)
            wanted = workers if workers is not None else min(cpus, n_chunks)
            per_chunk = cost.per_chunk(min(size, max(grid.height, grid.width)), grid.tile)
            fits = (limit - fixed - per_chunk) // (per_chunk + worker_bytes)  # one chunk waits for its blend
            if fits >= (wanted if full_parallelism else 1):
                return ResourcePlan(size, int(min(wanted, fits)), limit, per_chunk, worker_bytes, fixed)
    need = fixed + 2 * cost.per_chunk(sizes[-1], grid.tile) + worker_bytes
    raise OptionError(
        f"memory limit {limit / 2**20:.0f} MiB is too small for this run: it needs at least {need / 2**20:.0f} MiB "
        f"(chunk {sizes[-1]} px, one chunk in flight); raise --memory-limit or lower --chunk/--batch-size"
    )
