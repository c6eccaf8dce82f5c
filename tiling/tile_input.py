"""What a tile's forward pass reads around its output, one class per kind of model.

A 'same' model's input is its output tile: a window is read as it is and zero-padded past the raster's end
(only a raster smaller than one tile reaches there), or with ``fill="reflect"`` mirrored. Zero is the default:
one pass of the model over the whole raster zero-pads it in every conv, and zeros come closer to that than a
mirror (``benchmarks/README.md``, seams). A valid-convolution model needs ``before`` pixels above and left of
its output tile and ``after`` below and right (``tiling.geometry``); where these leave the raster they are
mirrored as numpy's ``reflect`` does (the edge pixel not repeated), as the U-Net paper extrapolates the border.
Both read *input-frame* spans: ``before`` pixels earlier than the output spans they serve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import OptionError
from .plan import Span
from .readers.base import RasterReader


def reflect_indices(span: Span, length: int) -> np.ndarray:
    """Raster indices of ``span`` mirrored into ``[0, length)`` as ``np.pad(mode="reflect")`` would, however
    far the span reaches (the reflection repeats with period ``2(length − 1)``)."""
    indices = np.arange(span.start, span.stop)
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.mod(indices, period)
    return np.where(folded < length, folded, period - folded)


@dataclass(frozen=True)
class PaddedInput:
    """A 'same' model's input: the output tile itself, zero past the raster's end (``fill="reflect"``: mirrored)."""

    before: int = 0
    after: int = 0
    fill: Literal["zero", "reflect"] = "zero"

    def __post_init__(self) -> None:
        if self.fill not in ("zero", "reflect"):
            raise OptionError(f"unknown fill {self.fill!r} past the raster's end (expected zero or reflect)")

    def input_size(self, tile: int) -> int:
        return tile

    def read(
        self, reader: RasterReader, rows: Span, cols: Span, raster_shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The raw pixels (bands, rows, cols) and their validity under ``rows`` × ``cols``, past the raster's end
        zero (invalid: the model sees 0) or mirrored (the mirrored pixels as valid as those they copy)."""
        if self.fill == "reflect":
            data, valid = mirrored_read(reader.read, rows, cols, raster_shape)
            assert data is not None and valid is not None
            return data, valid
        height, width = raster_shape
        data, valid = reader.read(Span(rows.start, min(rows.stop, height)), Span(cols.start, min(cols.stop, width)))
        return _pad_to(data, rows.size, cols.size, 0), _pad_to(valid, rows.size, cols.size, False)


@dataclass(frozen=True)
class MirroredInput:
    """A valid model's input: the output tile plus ``before`` / ``after`` pixels of context, mirrored at the
    raster's border."""

    before: int
    after: int

    def input_size(self, tile: int) -> int:
        return self.before + tile + self.after

    def read(
        self, reader: RasterReader, rows: Span, cols: Span, raster_shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The raw pixels and validity under ``rows`` × ``cols`` (which may reach past the raster on any side),
        mirrored back into it: the covering part of the raster is read once and indexed."""
        data, valid = mirrored_read(reader.read, rows, cols, raster_shape)
        assert data is not None and valid is not None
        return data, valid


TileInput = PaddedInput | MirroredInput


def mirrored_read(
    read: Callable[[Span, Span], tuple[np.ndarray | None, ...]], rows: Span, cols: Span, raster_shape: tuple[int, int]
) -> tuple[np.ndarray | None, ...]:
    """What ``read`` (arrays whose last two axes are a window inside the raster; None passes through) gives for
    ``rows`` × ``cols``, which may reach past the raster on any side: numpy-``reflect`` mirrored into it. The
    covering part of the raster is read once and indexed."""
    height, width = raster_shape
    r, c = reflect_indices(rows, height), reflect_indices(cols, width)
    r0, c0 = int(r.min()), int(c.min())
    arrays = read(Span(r0, int(r.max()) + 1), Span(c0, int(c.max()) + 1))
    if rows.start >= 0 and rows.stop <= height and cols.start >= 0 and cols.stop <= width:
        return arrays  # the window itself, already in order
    r, c = r - r0, c - c0
    return tuple(None if a is None else a[..., r[:, None], c[None, :]] for a in arrays)


def _pad_to(array: np.ndarray, rows: int, cols: int, value: float | bool) -> np.ndarray:
    """Pad the last two axes at the bottom/right (only when the raster is smaller than one tile)."""
    pad_r, pad_c = rows - array.shape[-2], cols - array.shape[-1]
    if pad_r == 0 and pad_c == 0:
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_r), (0, pad_c)]
    return np.pad(array, widths, constant_values=value)
