"""What a run holds at its peak, one term per thing held at once, and how fast a chunk size lets it run.

A local run holds, all at the same time:

- the process before the run (interpreter, torch and the other libraries: measured when the run is planned);
- the model's weights;
- one forward pass's workspace per forward thread (on a CPU; on a GPU the host-side buffers of a batch);
- each chunk in flight: its input window with the tiles' halo, its Σ w·p over the chunk plus the
  overhang, and, once blended, its encoded layers (the input is let go before then);
- the tile overhangs of one row of chunks, waiting for the chunks below them (the only term that grows with
  the raster, with its width);
- GDAL's block cache (capped for the run);
- for a remote input, what the process keeps of the bytes it fetched (``tiling.readers.read_cache_bytes``: a
  slide's tile cache, GDAL's cache of fetched ranges), kept until the process ends;
- the free memory the C allocator's heaps keep for reuse (``budget.HeapGuard`` trims beyond an allowance).

After the last chunk the heaps are trimmed and the output is assembled from the work store: one chunk's
encoded layers at a time, under the same block cache. The peak is the larger of the two phases.

Sizes only: nothing here opens a file or imports torch, so the terms are unit-tested as pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tiling.grid import TileGrid
from tiling.plan import ChunkPlan
from tiling.writers import OutputSpec

#: What a forward thread holds on a CPU, as a multiple of ``model.activation_bytes_per_tile`` × the largest
#: batch. Two threads alone, both at batch 2 of 512² tiles (width-16 U-Net) the whole time, held 486 MiB each
#: against 332 MiB counted; in a run, where the batch sizer tries 1 and 2 and the threads share their heaps,
#: the activations as counted (no slack) put the estimate within 10 % of the measured peaks
#: (``benchmarks/memory.py``; a 4096² run: 1199 MiB, of which 641 MiB besides the other terms).
CPU_FORWARD_SLACK = 1.0
#: Transient bytes per window pixel while a window is read (GDAL's buffer, the per-band validity tests).
READ_SCRATCH = 2


@dataclass(frozen=True)
class ChunkCost:
    """Bytes a chunk in flight holds, per pixel, from the raster's bands and the model's classes."""

    bands: int
    classes: int
    itemsize: int
    #: Bytes per pixel of the layers a chunk writes (labels: 1; float32 probabilities: 4 per class).
    output_bytes: int = 1
    #: Pixels a tile's input is wider than its output (a valid model's context on both sides; 0 for 'same').
    context: int = 0

    @property
    def window_bytes(self) -> int:
        """The input window (bands, raw dtype), its validity and the reader's scratch, per pixel."""
        return self.bands * self.itemsize + 1 + READ_SCRATCH

    @property
    def sums_bytes(self) -> int:
        """Σ w·p (float32 per class) per pixel of the chunk's extent (Σ w is computed band by band at the blend)."""
        return 4 * self.classes

    @property
    def written_bytes(self) -> int:
        """While a chunk is written: its coverage mask and its encoded layers, per pixel of the chunk."""
        return 1 + self.output_bytes

    def per_chunk(self, extent: tuple[int, int], chunk: tuple[int, int]) -> int:
        """Peak bytes of one chunk in flight whose sums cover ``extent`` (rows, cols) and which owns ``chunk``.

        The input window (the extent and, for a valid model, its tiles' context) is let go once its tiles have
        run, before the chunk is blended and written."""
        sums = extent[0] * extent[1] * self.sums_bytes
        reading = (extent[0] + self.context) * (extent[1] + self.context) * self.window_bytes
        writing = chunk[0] * chunk[1] * self.written_bytes
        return sums + max(reading, writing)

    def overhang_row(self, width: int, overhang: int) -> int:
        """Σ w·p of the strip of ``overhang`` rows that a row of chunks hands to the row below."""
        return width * overhang * self.sums_bytes


def encoded_bytes(spec: OutputSpec | None, classes: int) -> int:
    """Bytes per pixel of the layers a chunk encodes for ``spec`` (none without an output: the probabilities
    are read, not written)."""
    if spec is None:
        return 0
    total = 1 if spec.writes_labels else 0
    if spec.writes_instances:
        total += 1 + 4  # the labels' confidence for the objects' first pass, and its seeds
    if spec.writes_probs:
        total += classes * (4 if spec.probs_dtype == "float32" else 9)  # uint8: scaled float32 copies first
    return total


@dataclass(frozen=True)
class ChunkShape:
    """The largest extent of a chunk size over a grid, and how far its tiles overhang the chunk."""

    chunk: tuple[int, int]
    extent: tuple[int, int]
    n_chunks: int
    #: Tiles a chunk owns (the largest number: a chunk in the interior).
    tiles: int

    @property
    def overhang(self) -> tuple[int, int]:
        return self.extent[0] - self.chunk[0], self.extent[1] - self.chunk[1]

    @classmethod
    def of(cls, grid: TileGrid, size: int) -> ChunkShape:
        plan = ChunkPlan(grid, (size, size))
        axes = plan.rows, plan.cols
        spans = [max(axis.span(i).size for i in range(axis.n_chunks)) for axis in axes]
        extents = [max(axis.extent(i).size for i in range(axis.n_chunks)) for axis in axes]
        tiles = math.prod(max(len(axis.owned(i)) for i in range(axis.n_chunks)) for axis in axes)
        return cls((spans[0], spans[1]), (extents[0], extents[1]), plan.n_chunks, tiles)


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's memory, term by term (bytes)."""

    baseline: int
    model: int
    forward_threads: int
    per_forward: int
    chunks_in_flight: int
    per_chunk: int
    overhangs: int
    gdal_cache: int
    #: What the assembly holds besides the process, the model and the block cache: a chunk's encoded layers.
    assembly: int
    #: Free memory the heaps keep for the next forward passes and chunks (``budget.HeapGuard``'s allowance).
    free_heap: int = 0
    #: What the process keeps of the bytes fetched from a remote input (``tiling.readers.read_cache_bytes``).
    read_cache: int = 0

    @property
    def running(self) -> int:
        held = self.baseline + self.model + self.forward_threads * self.per_forward + self.gdal_cache
        return held + self.chunks_in_flight * self.per_chunk + self.overhangs + self.free_heap + self.read_cache

    @property
    def assembling(self) -> int:
        return self.baseline + self.model + self.gdal_cache + self.assembly + self.read_cache

    @property
    def peak(self) -> int:
        return max(self.running, self.assembling)

    def terms(self) -> list[tuple[str, int, int]]:
        """(what, how many, bytes each) of the running phase, for ``tilewise info``."""
        return [
            ("process", 1, self.baseline),
            ("model", 1, self.model),
            ("forward passes", self.forward_threads, self.per_forward),
            ("chunks", self.chunks_in_flight, self.per_chunk),
            ("overhangs", 1, self.overhangs),
            ("GDAL cache", 1, self.gdal_cache),
            ("free heap", 1, self.free_heap),
            *([("read cache", 1, self.read_cache)] if self.read_cache else []),
        ]


#: CPU core-nanoseconds per pixel of reading, accumulating, blending and writing (a 1×1-conv model's run).
PIPELINE_NS_PER_PIXEL = 80.0
#: CPU core-nanoseconds per multiply-add of a forward pass (the width-16, depth-4 U-Net: 46 k MAC per pixel
#: in 1.3 µs a pixel on one core).
CPU_NS_PER_MAC = 1300.0 / 46_000
#: Core-nanoseconds each chunk costs besides its pixels: its five tasks, its window's read set-up, its work
#: store writes and flags (the pipeline-bound run: 0.43 s for 4 chunks of 4096², 1.45 s for 16 of 8192²).
CHUNK_OVERHEAD_NS = 20e6
#: A chunk size keeps full speed when what it adds (re-read halo, per-chunk work) is within this share of the
#: chunk's work.
MAX_SLOWDOWN = 0.02
#: A chunk owns at least this many batches, so a forward thread never waits for its next one within a chunk.
MIN_BATCHES_PER_CHUNK = 2


@dataclass(frozen=True)
class ChunkSpeed:
    """Work per pixel of a run (core-nanoseconds), to tell which chunk sizes keep it at full speed.

    ``model_ns`` is the forward pass's work per pixel on the CPU cores; 0 where the model runs elsewhere (a
    GPU: the CPU's share of the run is then the pipeline's, and chunks must be large for it to stay small).
    """

    model_ns: float
    max_batch: int
    pipeline_ns: float = PIPELINE_NS_PER_PIXEL
    chunk_ns: float = CHUNK_OVERHEAD_NS

    def slowdown(self, shape: ChunkShape) -> float:
        """Extra work of a chunk (its halo's pipeline work and its fixed cost) over its own pixels' work."""
        rows, cols = shape.chunk
        own = rows * cols * (self.model_ns + self.pipeline_ns)
        halo = (shape.extent[0] * shape.extent[1] - rows * cols) * self.pipeline_ns
        return (halo + self.chunk_ns) / own

    def full_speed(self, shape: ChunkShape) -> bool:
        fed = shape.tiles >= MIN_BATCHES_PER_CHUNK * self.max_batch
        return fed and self.slowdown(shape) <= MAX_SLOWDOWN
