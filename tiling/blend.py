"""Overlap-add blending: ``output = Σ w·p / Σ w``, accumulated in float32 and divided once per chunk."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .plan import Span


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
    """Running Σ w·p and Σ w over one rectangle of the raster (a chunk's accumulation extent)."""

    def __init__(self, rows: Span, cols: Span, classes: int, weight: np.ndarray) -> None:
        self.rows, self.cols = rows, cols
        self.weight = weight
        self.num = np.zeros((classes, rows.size, cols.size), dtype=np.float32)
        self.den = np.zeros((rows.size, cols.size), dtype=np.float32)

    def add(self, probs: np.ndarray, origins: Iterable[tuple[int, int]]) -> None:
        """Add a batch of tile probabilities (batch, classes, T, T) whose top-left pixels are ``origins``."""
        tile = self.weight.shape[0]
        weighted = np.multiply(probs, self.weight, out=probs if probs.flags.writeable else None)
        for p, (y, x) in zip(weighted, origins, strict=True):
            r, c = y - self.rows.start, x - self.cols.start
            self.num[:, r : r + tile, c : c + tile] += p
            self.den[r : r + tile, c : c + tile] += self.weight

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


def blend(rows: Span, cols: Span, classes: int, contributions: Iterable[Contribution | None]) -> np.ndarray:
    """Sum the contributions that land on one chunk and divide: probabilities (classes, rows, cols).

    Pixels that no tile covered (all their tiles were skipped) come out NaN.
    """
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
    np.divide(num, den, out=num, where=covered)
    num[:, ~covered] = np.nan
    return num
