"""What a training or validation tile reads, and the part of it the loss and scores are taken on; one class per
kind of model.

A 'same' model's tile is its own output: ``tile``² pixels, 0/invalid/``IGNORE`` past the raster (``PaddedTile``).
A valid-convolution model's output tile of ``tile`` px is computed from ``context`` px more on every side (and a
``tail`` of 0-4 px that makes the input legal, see ``tiling.geometry``): the image, its labels and weights are
read over the whole input window, mirrored at the raster's border as prediction mirrors it, augmented together,
and the labels and weights then cropped to the network's output (``MirroredTile``). Validation tiles of a valid
model abut, as prediction's do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from tiling.plan import Span
from tiling.tile_input import mirrored_read

from ..model import UNetConfig
from .data import GridTile, Pair, grid_tiles, read_raw_tile
from .masks import IGNORE

#: Raw image (bands, S, S), validity, labels and weights (None without a weight map) of an input window.
RawTile = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class PaddedTile:
    """A 'same' model's tile: input and output are the same ``tile``² pixels."""

    tile: int

    @property
    def context(self) -> int:
        return 0

    @property
    def input_size(self) -> int:
        return self.tile

    @property
    def output_size(self) -> int:
        return self.tile

    def read(self, pair: Pair, row: int, col: int, weighted: bool = True) -> RawTile:
        """The window whose output starts at (row, col)."""
        return read_raw_tile(pair, row, col, self.tile, weighted)

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Labels or weights (…, S, S) of the input window on the network's output: all of them."""
        return array

    def validation_tiles(self, pairs: Sequence[Pair], overlap: int) -> Iterator[GridTile]:
        return grid_tiles(pairs, self.tile, overlap)


@dataclass(frozen=True)
class MirroredTile:
    """A valid model's tile: an output of ``tile + tail`` px read with ``context`` px around it."""

    tile: int
    context: int
    tail: int

    @property
    def input_size(self) -> int:
        return self.tile + self.tail + 2 * self.context

    @property
    def output_size(self) -> int:
        return self.tile + self.tail

    def read(self, pair: Pair, row: int, col: int, weighted: bool = True) -> RawTile:
        """The input window of the output tile at (row, col), mirrored where it leaves the raster (targets too)."""
        rows = Span(row - self.context, row - self.context + self.input_size)
        cols = Span(col - self.context, col - self.context + self.input_size)
        raw, valid, labels, weights = mirrored_read(
            lambda r, c: pair.read_raw(r, c, weighted), rows, cols, (pair.height, pair.width)
        )
        assert raw is not None and valid is not None and labels is not None
        return raw, valid, labels, weights

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Labels or weights (…, S, S) of the input window on the network's output (the centre)."""
        c = self.context
        return array[..., c : array.shape[-2] - c, c : array.shape[-1] - c]

    def validation_tiles(self, pairs: Sequence[Pair], overlap: int) -> Iterator[GridTile]:
        """Abutting output tiles at multiples of ``tile`` (as prediction's); each scores its ``tile`` px inside
        the raster (``overlap`` does not apply)."""
        for index, pair in enumerate(pairs):
            for row in range(0, pair.height, self.tile):
                for col in range(0, pair.width, self.tile):
                    own_rows = slice(0, min(self.tile, pair.height - row))
                    own_cols = slice(0, min(self.tile, pair.width - col))
                    yield GridTile(index, row, col, own_rows, own_cols)


TrainingTile = PaddedTile | MirroredTile


def training_tile(model: UNetConfig, tile: int) -> TrainingTile:
    """How ``model`` reads a training tile whose output is ``tile`` px (checks the tile against the model)."""
    model.check_tile(tile)
    if not model.valid:
        return PaddedTile(tile)
    geometry = model.geometry
    return MirroredTile(tile, geometry.context, geometry.tail(tile))


def scored_labels(window: TrainingTile, labels: np.ndarray, tile: GridTile) -> np.ndarray:
    """A validation tile's labels on the network's output, ``IGNORE`` outside the part the tile scores."""
    output = window.crop(labels)
    scored = np.full_like(output, IGNORE)
    scored[tile.own_rows, tile.own_cols] = output[tile.own_rows, tile.own_cols]
    return scored
