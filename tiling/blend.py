"""Overlap-add blending: ``output = Σ w·p / Σ w``, accumulated in float32 and divided once per chunk.

Σ w·p is summed tile by tile as the model's output comes in. Σ w depends on which tiles ran, not on the model,
so it is never summed tile by tile nor carried from chunk to chunk: the blend of a chunk computes it from the
tile grid (``TileCover``) and the tiles that did not run. Where every tile covering the chunk ran (the rule),
Σ w is the outer product of two 1-D sums and the division runs band by band without a Σ w array; its value
depends only on the grid, so it is the same for any chunking.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .plan import Span
from .sum_buffers import zeros_outside_heap

Origin = tuple[int, int]
#: Rows of a chunk divided at once by their Σ w (an outer product small enough to stay in the CPU's cache).
DIVISION_ROWS = 32


@dataclass
class Contribution:
    """Part of the weighted sums Σ w·p that one chunk's tiles add to one output chunk: ``num`` (classes, rows,
    cols) at raster pixel (``row0``, ``col0``)."""

    row0: int
    col0: int
    num: np.ndarray


class Accumulator:
    """Running Σ w·p over one rectangle of the raster (a chunk's accumulation extent). The tile weight is the
    outer product of a 1-D ``profile`` with itself (see ``windows.window_2d``)."""

    def __init__(self, rows: Span, cols: Span, classes: int, profile: np.ndarray) -> None:
        self.rows, self.cols = rows, cols
        self.weight = np.outer(profile, profile)
        self.num = zeros_outside_heap((classes, rows.size, cols.size))

    def add(self, probs: np.ndarray, origins: Iterable[Origin]) -> None:
        """Add a batch of tile probabilities (batch, classes, T, T) whose top-left pixels are ``origins``."""
        tile = self.weight.shape[0]
        weighted = np.multiply(probs, self.weight, out=probs if probs.flags.writeable else None)
        for p, (y, x) in zip(weighted, origins, strict=True):
            r, c = y - self.rows.start, x - self.cols.start
            self.num[:, r : r + tile, c : c + tile] += p

    def contribution(self, rows: Span, cols: Span, copy: bool) -> Contribution | None:
        """The sums inside ``rows`` × ``cols`` (raster pixels), or None if they do not meet this extent.

        ``copy=True`` detaches the piece from this accumulator so a small overhang does not keep the whole
        extent alive while it waits for its neighbour.
        """
        r, c = self.rows.intersect(rows), self.cols.intersect(cols)
        if r is None or c is None:
            return None
        rs = slice(r.start - self.rows.start, r.stop - self.rows.start)
        cs = slice(c.start - self.cols.start, c.stop - self.cols.start)
        num = self.num[:, rs, cs]
        return Contribution(r.start, c.start, num.copy() if copy else num)


@dataclass(frozen=True)
class TileCover:
    """The tiles of the grid that cover a chunk: every row origin with every column origin (raster pixels),
    each tile weighted by ``outer(profile, profile)``."""

    row_origins: tuple[int, ...]
    col_origins: tuple[int, ...]

    def weight_sum(self, rows: Span, cols: Span, profile: np.ndarray, missing: Iterable[Origin] = ()) -> WeightSum:
        """Σ w over ``rows`` × ``cols`` of the covering tiles that ran (all but ``missing``)."""
        row_origins, col_origins = set(self.row_origins), set(self.col_origins)
        left_out = {(y, x) for y, x in missing if y in row_origins and x in col_origins}
        along_rows = _along(self.row_origins, profile, rows)
        along_cols = _along(self.col_origins, profile, cols)
        if not left_out:
            return WeightSum(along_rows, along_cols)
        tile = profile.shape[0]
        weight = np.outer(profile, profile)
        dense = np.zeros((rows.size, cols.size), np.float32)
        for y in self.row_origins:
            for x in self.col_origins:
                if (y, x) in left_out:
                    continue
                r0, r1 = max(y, rows.start), min(y + tile, rows.stop)
                c0, c1 = max(x, cols.start), min(x + tile, cols.stop)
                if r0 < r1 and c0 < c1:
                    dense[r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start] += weight[
                        r0 - y : r1 - y, c0 - x : c1 - x
                    ]
        return WeightSum(along_rows, along_cols, dense)


def _along(origins: Iterable[int], profile: np.ndarray, span: Span) -> np.ndarray:
    """Σ of the 1-D profiles of tiles starting at ``origins``, over ``span`` (in the origins' sorted order, so
    the sum is the same whichever chunk computes it)."""
    tile = profile.shape[0]
    total = np.zeros(span.size, np.float32)
    for start in sorted(origins):
        a, b = max(start, span.start), min(start + tile, span.stop)
        if a < b:
            total[a - span.start : b - span.start] += profile[a - start : b - start]
    return total


@dataclass(frozen=True)
class WeightSum:
    """Σ w over a chunk: ``outer(along_rows, along_cols)`` when every covering tile ran, else ``dense``."""

    along_rows: np.ndarray
    along_cols: np.ndarray
    dense: np.ndarray | None = None

    def array(self) -> np.ndarray:
        """Σ w as an array (rows, cols)."""
        return self.dense if self.dense is not None else np.outer(self.along_rows, self.along_cols)

    def divide(self, num: np.ndarray) -> None:
        """``num`` (classes, rows, cols) /= Σ w in place; NaN where no tile covers a pixel."""
        if self.dense is not None:
            _divide(num, self.dense)
            return
        # Every pixel is covered when both 1-D sums are positive: then no band needs its coverage checked.
        covered = bool((self.along_rows > 0).all() and (self.along_cols > 0).all())
        for start in range(0, num.shape[1], DIVISION_ROWS):
            rows = slice(start, start + DIVISION_ROWS)
            band, den = num[:, rows], np.outer(self.along_rows[rows], self.along_cols)
            if covered:
                np.divide(band, den, out=band)
            else:
                _divide(band, den)


def _divide(num: np.ndarray, den: np.ndarray) -> None:
    covered = den > 0
    if covered.all():
        np.divide(num, den, out=num)
    else:
        np.divide(num, den, out=num, where=covered)
        num[:, ~covered] = np.nan


def blend(
    rows: Span,
    cols: Span,
    classes: int,
    contributions: Iterable[Contribution | None],
    weights: WeightSum,
    into: Contribution | None = None,
) -> np.ndarray:
    """Sum the contributions that land on one chunk and divide by ``weights`` (Σ w over the chunk):
    probabilities (classes, rows, cols).

    ``into``, a contribution that covers exactly ``rows`` × ``cols`` and may be overwritten (a chunk's own sums,
    a view of its accumulator), takes the sums in place of a new array; it counts as the first contribution.
    Pixels that no tile covered (all their tiles were skipped) come out NaN.
    """
    if into is not None:
        if (into.row0, into.col0, into.num.shape[1:]) != (rows.start, cols.start, (rows.size, cols.size)):
            raise ValueError("blend: `into` must cover exactly the chunk")
        num = into.num
    else:
        num = np.zeros((classes, rows.size, cols.size), dtype=np.float32)
    for part in contributions:
        if part is None:
            continue
        r = part.row0 - rows.start
        c = part.col0 - cols.start
        h, w = part.num.shape[1:]
        num[:, r : r + h, c : c + w] += part.num
    weights.divide(num)
    return num
