"""First pass, in each chunk: the chunk's pieces of objects (seeds) labelled on their own.

A piece is a 4-connected region of one object class inside one chunk. Its label is local to the chunk
(1..n, in raster order of the piece's first pixel); the pieces of one object in several chunks are joined later
across the chunk faces (``union``). Each piece is described by its class and its first pixel in the raster
(``row * width + col`` of its top-left-most pixel in raster order), which keys the object it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .spec import InstanceSpec

#: 4-connectivity.
CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Pieces:
    """The pieces of one chunk: ``classes[k]`` and ``first[k]`` (raster flat index) of local label ``k + 1``."""

    classes: np.ndarray  # uint8 (n,)
    first: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return int(self.classes.size)

    @classmethod
    def empty(cls) -> Pieces:
        return cls(np.zeros(0, np.uint8), np.zeros(0, np.int64))


def label_pieces(
    classes: np.ndarray, spec: InstanceSpec, origin: tuple[int, int], width: int
) -> tuple[np.ndarray, Pieces]:
    """Local labels (uint32, 0 = no piece) of the object-class regions of ``classes`` (a chunk's class map whose
    top-left pixel is raster pixel ``origin`` of a raster ``width`` wide), and their pieces."""
    seeds = np.zeros(classes.shape, np.uint32)
    count = 0
    for value in spec.object_classes:
        mask = classes == value
        if not mask.any():
            continue
        labels, n = ndimage.label(mask, structure=CROSS)
        seeds[mask] = labels[mask].astype(np.uint32) + count
        count += n
    if count == 0:
        return seeds, Pieces.empty()
    return _in_raster_order(seeds, classes, origin, width)


def _in_raster_order(
    seeds: np.ndarray, classes: np.ndarray, origin: tuple[int, int], width: int
) -> tuple[np.ndarray, Pieces]:
    """Renumber the labels 1..n in raster order of their first pixel, so they do not depend on the class order."""
    flat = seeds.ravel()
    found, first_index = np.unique(flat, return_index=True)
    keep = found != 0
    found, first_index = found[keep], first_index[keep]
    order = np.argsort(first_index, kind="stable")
    renumber = np.zeros(int(found.max()) + 1, np.uint32)
    renumber[found[order]] = np.arange(1, found.size + 1, dtype=np.uint32)
    first_local = first_index[order]
    rows, cols = np.divmod(first_local, seeds.shape[1])
    first = (rows + origin[0]).astype(np.int64) * width + (cols + origin[1])
    return renumber[seeds], Pieces(classes.ravel()[first_local].astype(np.uint8), first)
