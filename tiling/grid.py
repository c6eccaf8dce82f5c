"""The global tile grid: where tiles sit on the whole raster.

The grid is fixed on the whole raster (origin 0, stride ``S = T - overlap``) and never per chunk, so every
chunking of the same raster sees the same tiles. The last tile on each axis is shifted back so that it ends at
the raster's edge; an axis shorter than one tile gets a single tile at 0 and the raster is padded to ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from .errors import OptionError


def resolve_overlap(overlap: float | int, tile: int) -> int:
    """Overlap in pixels from pixels (an int, or a float ≥ 1) or a fraction of the tile (a float < 1)."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)):
        raise OptionError(f"overlap must be a number of pixels or a fraction of the tile, got {overlap!r}")
    if overlap < 0:
        raise OptionError(f"overlap must not be negative, got {overlap}")
    if isinstance(overlap, float) and overlap < 1:
        pixels = round(overlap * tile)
    else:
        if overlap != int(overlap):
            raise OptionError(f"overlap in pixels must be a whole number, got {overlap}")
        pixels = int(overlap)
    if pixels >= tile:
        raise OptionError(f"overlap ({pixels} px) must be smaller than the tile ({tile} px)")
    return pixels


def axis_origins(length: int, tile: int, stride: int) -> tuple[int, ...]:
    """Tile start positions along one axis of ``length`` pixels.

    Origins are ``0, S, 2S, …`` with the last one moved back to ``length - tile`` so no tile leaves the
    raster; an axis shorter than a tile has the single origin 0 (the raster is padded up to the tile).
    """
    if length <= 0:
        raise OptionError(f"raster axis has length {length}; it must be at least 1 pixel")
    if tile <= 0 or stride <= 0:
        raise OptionError(f"tile ({tile}) and stride ({stride}) must be positive")
    if length <= tile:
        return (0,)
    steps = math.ceil((length - tile) / stride)
    return (*(i * stride for i in range(steps)), length - tile)


@dataclass(frozen=True)
class Tile:
    """One tile of the grid: its index on each axis and its top-left pixel."""

    row: int
    col: int
    y: int
    x: int


@dataclass(frozen=True)
class TileGrid:
    """Tiles of size ``tile`` overlapping by ``overlap`` pixels over a ``height`` × ``width`` raster."""

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise OptionError(f"raster has a zero dimension ({self.height} x {self.width} pixels)")
        if self.tile <= 0:
            raise OptionError(f"tile must be positive, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise OptionError(f"overlap ({self.overlap} px) must be in [0, tile={self.tile})")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def padded_height(self) -> int:
        """Height of the raster padded up to one tile (equal to ``height`` unless it is smaller)."""
        return max(self.height, self.tile)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.tile)

    @cached_property
    def row_origins(self) -> tuple[int, ...]:
        return axis_origins(self.height, self.tile, self.stride)

    @cached_property
    def col_origins(self) -> tuple[int, ...]:
        return axis_origins(self.width, self.tile, self.stride)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles along (rows, columns)."""
        return len(self.row_origins), len(self.col_origins)

    @property
    def n_tiles(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def tiles(self) -> Iterator[Tile]:
        """All tiles, row by row."""
        for r, y in enumerate(self.row_origins):
            for c, x in enumerate(self.col_origins):
                yield Tile(r, c, y, x)


@dataclass(frozen=True)
class AbuttingGrid(TileGrid):
    """Output tiles of a valid-convolution model: no overlap, origins at ``0, T, 2T, …``.

    ``T`` is a multiple of the model's ``k`` (``geometry.ValidGeometry``), so every origin is too and each tile's
    pooling windows fall where one pass over the whole raster puts them. The last tile is therefore never
    shifted back: it reaches past the raster's end, and what it computes there is dropped.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overlap != 0:
            raise OptionError(f"tiles of a valid-convolution model abut: overlap must be 0, got {self.overlap}")

    @cached_property
    def row_origins(self) -> tuple[int, ...]:
        return tuple(range(0, self.height, self.tile))

    @cached_property
    def col_origins(self) -> tuple[int, ...]:
        return tuple(range(0, self.width, self.tile))
