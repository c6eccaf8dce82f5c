"""The chunk plan: which chunk owns which tiles, and where each chunk's predictions land.

Inference is overlap-add. The output raster is cut into chunks; the task for chunk (i, j) runs the tiles whose
*origin* lies inside that chunk, so each tile of the global grid runs exactly once. A tile may reach past its
owner's bottom/right edge by up to ``tile - 1`` pixels; that overhang is handed to the neighbouring chunks, which
add it to their own sums. Everything is separable, so the plan is two 1-D ``AxisPlan``s.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

from .errors import OptionError
from .grid import TileGrid


@dataclass(frozen=True)
class Span:
    """A half-open pixel interval ``[start, stop)`` along one axis."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def intersect(self, other: Span) -> Span | None:
        start, stop = max(self.start, other.start), min(self.stop, other.stop)
        return Span(start, stop) if start < stop else None


@dataclass(frozen=True)
class AxisPlan:
    """Chunking of one raster axis of ``length`` pixels, with the tile origins the grid puts on it."""

    length: int
    tile: int
    chunk: int
    origins: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.chunk <= 0:
            raise OptionError(f"chunk size must be positive, got {self.chunk}")

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.length / self.chunk)

    @property
    def chunk_sizes(self) -> tuple[int, ...]:
        return tuple(self.span(i).size for i in range(self.n_chunks))

    def span(self, i: int) -> Span:
        """Pixels of chunk ``i``."""
        return Span(i * self.chunk, min((i + 1) * self.chunk, self.length))

    def owned(self, i: int) -> tuple[int, ...]:
        """Tile origins inside chunk ``i`` (the tiles chunk ``i`` runs)."""
        span = self.span(i)
        lo = bisect.bisect_left(self.origins, span.start)
        hi = bisect.bisect_left(self.origins, span.stop)
        return self.origins[lo:hi]

    def covering(self, i: int) -> tuple[int, ...]:
        """Tile origins whose tiles meet chunk ``i`` (its own and its neighbours' that reach into it)."""
        span = self.span(i)
        lo = bisect.bisect_left(self.origins, span.start - self.tile + 1)
        hi = bisect.bisect_left(self.origins, span.stop)
        return self.origins[lo:hi]

    def extent(self, i: int) -> Span:
        """Pixels chunk ``i`` accumulates into: its own span plus the overhang of its last tile.

        May pass the raster's end only when the raster is shorter than one tile (it is then padded).
        """
        span = self.span(i)
        owned = self.owned(i)
        stop = max(span.stop, owned[-1] + self.tile) if owned else span.stop
        return Span(span.start, stop)

    def destinations(self, i: int) -> tuple[int, ...]:
        """Chunks that receive part of chunk ``i``'s accumulation (``i`` itself first)."""
        extent = self.extent(i)
        last = min(self.n_chunks, math.ceil(min(extent.stop, self.length) / self.chunk))
        return tuple(range(i, last))

    def sources(self, j: int) -> tuple[int, ...]:
        """Chunks whose accumulation reaches into chunk ``j`` (in increasing order, ``j`` last)."""
        span = self.span(j)
        first = max(0, (span.start - self.tile) // self.chunk)
        return tuple(i for i in range(first, j + 1) if self.extent(i).stop > span.start)


@dataclass(frozen=True)
class ChunkPlan:
    """A tile grid cut into output chunks of ``chunk`` = (rows, cols) pixels."""

    grid: TileGrid
    chunk: tuple[int, int]

    @cached_property
    def rows(self) -> AxisPlan:
        return AxisPlan(self.grid.height, self.grid.tile, self.chunk[0], self.grid.row_origins)

    @cached_property
    def cols(self) -> AxisPlan:
        return AxisPlan(self.grid.width, self.grid.tile, self.chunk[1], self.grid.col_origins)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of chunks along (rows, columns)."""
        return self.rows.n_chunks, self.cols.n_chunks

    @property
    def n_chunks(self) -> int:
        return self.rows.n_chunks * self.cols.n_chunks

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Chunk sizes in dask's format."""
        return self.rows.chunk_sizes, self.cols.chunk_sizes

    def tiles_owned(self, i: int, j: int) -> list[tuple[int, int]]:
        """(y, x) origins of the tiles chunk (i, j) runs."""
        return [(y, x) for y in self.rows.owned(i) for x in self.cols.owned(j)]

    def max_extent(self) -> tuple[int, int]:
        """Largest accumulation extent of any chunk, for memory estimates."""
        return (
            max(self.rows.extent(i).size for i in range(self.rows.n_chunks)),
            max(self.cols.extent(j).size for j in range(self.cols.n_chunks)),
        )
