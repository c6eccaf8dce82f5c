"""Overlap-add blending: ``output = Σ w·p / Σ w``, accumulated in float32 and divided once per chunk."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .plan import Span
from .sum_buffers import zeros_outside_heap


@dataclass
class Contribution:
    """Part of the weighted sums that one chunk's tiles add to one output chunk.

    ``num`` is Σ w·p with shape (classes, rows, cols) and ``den`` is Σ w with shape (rows, cols); both sit at
    raster pixel (``row0``, ``col0``).
    """

    row0: int
    col0: int
    num: np.ndarray
    den: np.ndarray


class Accumulator:
    """Running Σ w·p over one rectangle of the raster (a chunk's accumulation extent), and the Σ w that goes
    with it.

    The tile weight is the outer product of a 1-D ``profile`` with itself (see ``windows.window_2d``). Σ w does
    not depend on the model, only on which tiles ran, so it is not summed tile by tile: it is computed once,
    when first needed. Where the tiles that ran form a full grid (every row origin with every column origin, as
    in a chunk where no tile was skipped) it is the outer product of the two 1-D sums, one pass over the extent
    instead of a zeroed array and an addition per tile.
    """

    def __init__(self, rows: Span, cols: Span, classes: int, profile: np.ndarray) -> None:
        self.rows, self.cols = rows, cols
        self.profile = profile
        self.weight = np.outer(profile, profile)
        self.num = zeros_outside_heap((classes, rows.size, cols.size))
        self._origins: list[tuple[int, int]] = []  # extent-local, in the order the tiles were added
        self._den: np.ndarray | None = None

    def add(self, probs: np.ndarray, origins: Iterable[tuple[int, int]]) -> None:
        """Add a batch of tile probabilities (batch, classes, T, T) whose top-left pixels are ``origins``."""
        tile = self.weight.shape[0]
        weighted = np.multiply(probs, self.weight, out=probs if probs.flags.writeable else None)
        for p, (y, x) in zip(weighted, origins, strict=True):
            r, c = y - self.rows.start, x - self.cols.start
            self.num[:, r : r + tile, c : c + tile] += p
            self._origins.append((r, c))
        self._den = None

    @property
    def den(self) -> np.ndarray:
        """Σ w over the extent of the tiles added so far."""
        if self._den is None:
            self._den = tile_weight_sum(self._origins, self.profile, (self.rows.size, self.cols.size))
        return self._den

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
        num, den = self.num[:, rs, cs], self.den[rs, cs]
        if copy:
            num, den = num.copy(), den.copy()
        return Contribution(r.start, c.start, num, den)


def tile_weight_sum(origins: Sequence[tuple[int, int]], profile: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Σ w (float32, ``shape``) of tiles at ``origins`` whose weight is ``outer(profile, profile)``.

    Tiles on a full grid (each row origin with each column origin, once) are summed as the outer product of
    the 1-D sums; others one by one.
    """
    tile = profile.shape[0]
    ys, xs = sorted({y for y, _ in origins}), sorted({x for _, x in origins})
    if len(origins) == len(ys) * len(xs) and len(set(origins)) == len(origins):
        along_rows, along_cols = np.zeros(shape[0], np.float32), np.zeros(shape[1], np.float32)
        for y in ys:
            along_rows[y : y + tile] += profile
        for x in xs:
            along_cols[x : x + tile] += profile
        return np.outer(along_rows, along_cols, out=zeros_outside_heap(shape))
    den = zeros_outside_heap(shape)
    weight = np.outer(profile, profile)
    for y, x in origins:
        den[y : y + tile, x : x + tile] += weight
    return den


def blend(
    rows: Span,
    cols: Span,
    classes: int,
    contributions: Iterable[Contribution | None],
    into: Contribution | None = None,
) -> np.ndarray:
    """Sum the contributions that land on one chunk and divide: probabilities (classes, rows, cols).

    ``into``, a contribution that covers exactly ``rows`` × ``cols`` and may be overwritten (a chunk's own sums,
    a view of its accumulator), takes the sums in place of new arrays; it counts as the first contribution.
    Pixels that no tile covered (all their tiles were skipped) come out NaN.
    """
    if into is not None:
        if (into.row0, into.col0, into.den.shape) != (rows.start, cols.start, (rows.size, cols.size)):
            raise ValueError("blend: `into` must cover exactly the chunk")
        num, den = into.num, into.den
    else:
        num = np.zeros((classes, rows.size, cols.size), dtype=np.float32)
        den = np.zeros((rows.size, cols.size), dtype=np.float32)
    for part in contributions:
        if part is None:
            continue
        r = part.row0 - rows.start
        c = part.col0 - cols.start
        h, w = part.den.shape
        num[:, r : r + h, c : c + w] += part.num
        den[r : r + h, c : c + w] += part.den
    covered = den > 0
    if covered.all():
        np.divide(num, den, out=num)
    else:
        np.divide(num, den, out=num, where=covered)
        num[:, ~covered] = np.nan
    return num
