"""How a model's tiles lie on the raster and what each one reads, one pair per kind of model.

A 'same' model: tiles of ``tile`` px overlapping by ``overlap`` (the last one shifted back inside the raster),
each reading exactly its own pixels, blended. A valid-convolution model: output tiles of ``tile`` px that abut on
origins that are multiples of ``k`` (``AbuttingGrid``), each reading its context around them, mirrored at the
raster's border (``MirroredInput``); every output pixel is computed once and nothing is blended.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiling.grid import AbuttingGrid, TileGrid
from tiling.tile_input import MirroredInput, PaddedInput, TileInput

from .model import UNetConfig

#: The blend of abutting tiles: weight 1 everywhere, so Σ w·p / Σ w is each pixel's one probability exactly.
ABUTTING_BLEND = "constant"


@dataclass(frozen=True)
class TileLayout:
    """A run's tile grid, what each tile reads around its output, and how overlapping tiles blend."""

    grid: TileGrid
    input: TileInput
    blend: str

    @property
    def input_size(self) -> int:
        """Pixels along each side of a tile's forward pass."""
        return self.input.input_size(self.grid.tile)


def tile_input(model: UNetConfig, tile: int) -> TileInput:
    """What a forward pass for an output tile of ``tile`` px reads (checks the tile against the model)."""
    model.check_tile(tile)
    if not model.valid:
        return PaddedInput()
    geometry = model.geometry
    return MirroredInput(geometry.context, geometry.context + geometry.tail(tile))


def tile_layout(model: UNetConfig, height: int, width: int, tile: int, overlap: int, blend: str) -> TileLayout:
    """The layout of ``model``'s tiles over a ``height`` × ``width`` raster (``overlap`` and ``blend`` apply to a
    'same' model only: a valid model's tiles abut)."""
    window = tile_input(model, tile)
    if model.valid:
        return TileLayout(AbuttingGrid(height, width, tile, 0), window, ABUTTING_BLEND)
    return TileLayout(TileGrid(height, width, tile, overlap), window, blend)
