"""Joining the chunks' pieces into objects across chunk faces, and keying each object by its first seed pixel.

Two pieces in neighbouring chunks are one object when a pixel of one and the pixel across the face from it (4-
connectivity: straight across, never diagonally) both belong to them and they are of the same class. The graph
of such pairs over every piece of the raster gives the objects as its connected components. Each object is keyed
by the raster flat index of its first seed pixel, plus one (0 stays "no object"): a key that no chunking can
change, used to break ties when boundary pixels join the nearest seed, and sorted to number the objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .pieces import Pieces

ChunkIndex = tuple[int, int]


def face_pairs(
    before: np.ndarray, after: np.ndarray, before_classes: np.ndarray, after_classes: np.ndarray
) -> np.ndarray:
    """Pairs (k, 2) of local labels that touch across a face: ``before`` and ``after`` are the two pixel lines
    facing each other (the last row of the chunk above and the first row of the chunk below, or the last and
    first columns), ``*_classes`` the pieces' classes by local label - 1."""
    touching = (before > 0) & (after > 0)
    if not touching.any():
        return np.zeros((0, 2), np.int64)
    pairs = np.unique(np.stack([before[touching], after[touching]], axis=1).astype(np.int64), axis=0)
    same = before_classes[pairs[:, 0] - 1] == after_classes[pairs[:, 1] - 1]
    return pairs[same]


def object_keys(
    pieces: Mapping[ChunkIndex, Pieces], joins: Iterable[tuple[ChunkIndex, ChunkIndex, np.ndarray]]
) -> dict[ChunkIndex, np.ndarray]:
    """Per chunk, the key (first seed pixel + 1) of the object each local label belongs to (index 0 → 0).

    ``joins`` holds (chunk a, chunk b, pairs of their local labels) for every face with touching pieces."""
    order = sorted(pieces)
    offsets, total = {}, 0
    for index in order:
        offsets[index] = total
        total += len(pieces[index])
    if total == 0:
        return {index: np.zeros(1, np.int64) for index in order}
    rows, cols = [], []
    for a, b, pairs in joins:
        if len(pairs):
            rows.append(pairs[:, 0] - 1 + offsets[a])
            cols.append(pairs[:, 1] - 1 + offsets[b])
    a_ids = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    b_ids = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(a_ids.size, np.int8), (a_ids, b_ids)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    first = np.concatenate([pieces[index].first for index in order])
    key = np.full(component.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(key, component, first)
    keys = key[component] + 1
    return {index: np.concatenate([[0], keys[offsets[index] : offsets[index] + len(pieces[index])]]) for index in order}
