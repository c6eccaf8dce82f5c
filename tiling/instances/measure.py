"""Measurements of objects: what each chunk sees of them, summed over chunks into one row per object.

Every measure is a count, an integer sum, a minimum or a maximum, so the sum over chunks is exact and does not
depend on how the raster was cut: area, Σ row and Σ col of the pixels (for the centroid), the bounding box,
the first pixel in raster order (which numbers the objects), and Σ of the pixels' confidence (uint8, for the
mean probability).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

COLUMNS = ("key", "area", "sum_row", "sum_col", "min_row", "min_col", "max_row", "max_col", "first", "confidence")


@dataclass(frozen=True)
class Measures:
    """One row per object (all int64): its key, then the measures named in ``COLUMNS``."""

    key: np.ndarray
    area: np.ndarray
    sum_row: np.ndarray
    sum_col: np.ndarray
    min_row: np.ndarray
    min_col: np.ndarray
    max_row: np.ndarray
    max_col: np.ndarray
    first: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return int(self.key.size)

    @classmethod
    def empty(cls) -> Measures:
        return cls(*(np.zeros(0, np.int64) for _ in COLUMNS))

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def measure(keys: np.ndarray, confidence: np.ndarray, origin: tuple[int, int], width: int) -> Measures:
    """The measures of the objects in a chunk's ``keys`` (int64, 0 = none) whose top-left pixel is raster pixel
    ``origin`` of a raster ``width`` wide; ``confidence`` (uint8) is each pixel's."""
    inside = keys != 0
    if not inside.any():
        return Measures.empty()
    rows, cols = np.nonzero(inside)  # in raster order, so an object's first occurrence is its first pixel
    found, first, which, area = np.unique(keys[rows, cols], return_index=True, return_inverse=True, return_counts=True)
    count = found.size
    sum_row = np.bincount(which, weights=rows, minlength=count).astype(np.int64) + area * origin[0]
    sum_col = np.bincount(which, weights=cols, minlength=count).astype(np.int64) + area * origin[1]
    conf = np.bincount(which, weights=confidence[rows, cols], minlength=count).astype(np.int64)
    labels = np.zeros(keys.shape, np.int32)
    labels[rows, cols] = which + 1
    boxes = ndimage.find_objects(labels, max_label=count)
    min_row = np.array([b[0].start for b in boxes], np.int64) + origin[0]
    max_row = np.array([b[0].stop - 1 for b in boxes], np.int64) + origin[0]
    min_col = np.array([b[1].start for b in boxes], np.int64) + origin[1]
    max_col = np.array([b[1].stop - 1 for b in boxes], np.int64) + origin[1]
    first_flat = (rows[first] + origin[0]).astype(np.int64) * width + cols[first] + origin[1]
    return Measures(
        found.astype(np.int64), area.astype(np.int64), sum_row, sum_col,
        min_row, min_col, max_row, max_col, first_flat, conf,
    )  # fmt: skip


def combine(parts: Sequence[Measures]) -> Measures:
    """The measures of each object over every chunk it touches (one row per key, in key order)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Measures.empty()
    joined = {name: np.concatenate([getattr(p, name) for p in parts]) for name in COLUMNS}
    order = np.argsort(joined["key"], kind="stable")
    keys = joined["key"][order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sums = {name: np.add.reduceat(joined[name][order], starts) for name in ("area", "sum_row", "sum_col", "confidence")}
    mins = {name: np.minimum.reduceat(joined[name][order], starts) for name in ("min_row", "min_col", "first")}
    maxs = {name: np.maximum.reduceat(joined[name][order], starts) for name in ("max_row", "max_col")}
    return Measures(key=keys[starts], **sums, **mins, **maxs)
