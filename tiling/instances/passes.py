"""The passes that turn the chunks' seeds in the work store into numbered objects, in bounded memory.

    first pass (as each chunk is written)   seeds → pieces, edges                  (``first_pass``)
    join (once, from the pieces' tables)    pieces joined across faces → keys       (``join``)
    objects (per chunk, with a halo)        boundary pixels grown, objects measured (``grow_and_measure``)
    numbering (once, from the measures)     objects sorted by first pixel → 1..N    (``number``)
    ids (per chunk)                         keys → ids, written as the instances    (``write_ids``)

The per-chunk passes read their own chunk and the edges its neighbours stored, never a neighbour's chunk; the
once-passes hold one row per piece or object, never pixels. Every result depends on the raster alone, so the
instance raster and its ids are the same for any chunking, worker count and resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import portable_errors
from ..plan import ChunkPlan, Span
from ..writers.encode import NODATA_UINT8, NODATA_UINT32
from .growth import grow
from .measure import COLUMNS, Measures, combine, measure
from .pieces import Pieces
from .union import face_pairs, object_keys

if TYPE_CHECKING:
    from ..writers.workstore import WorkStore

ChunkIndex = tuple[int, int]
#: Largest number of objects a uint32 instance raster can number (its top value is nodata).
MAX_OBJECTS = NODATA_UINT32 - 1


def chunk_indices(chunks: ChunkPlan) -> Iterator[ChunkIndex]:
    rows, cols = chunks.shape
    return ((i, j) for i in range(rows) for j in range(cols))


@dataclass(frozen=True)
class Joined:
    """Each chunk's map from its local seed labels to object keys (index 0 → 0), and each object's class."""

    keymaps: dict[ChunkIndex, np.ndarray]
    keys: np.ndarray  # every object key, sorted
    classes: np.ndarray  # their classes

    def around(self, index: ChunkIndex) -> dict[ChunkIndex, np.ndarray]:
        """The key maps a chunk's pass needs: its own and its neighbours'."""
        i, j = index
        return {n: self.keymaps[n] for di in (-1, 0, 1) for dj in (-1, 0, 1) if (n := (i + di, j + dj)) in self.keymaps}


def join(store: WorkStore, chunks: ChunkPlan) -> Joined:
    """Join every chunk's pieces across the chunk faces (from the pieces' tables only)."""
    tables = {index: store.get_table("pieces", index) for index in chunk_indices(chunks)}
    pieces = {index: Pieces(table["classes"], table["first"]) for index, table in tables.items()}
    joins = []
    for (i, j), table in tables.items():
        below, right = (i + 1, j), (i, j + 1)
        if below in tables:
            pairs = face_pairs(
                table["seeds_bottom"][-1], tables[below]["seeds_top"][0], pieces[i, j].classes, pieces[below].classes
            )
            joins.append(((i, j), below, pairs))
        if right in tables:
            pairs = face_pairs(
                table["seeds_right"][:, -1],
                tables[right]["seeds_left"][:, 0],
                pieces[i, j].classes,
                pieces[right].classes,
            )
            joins.append(((i, j), right, pairs))
    keymaps = object_keys(pieces, joins)
    all_keys = np.concatenate([keymaps[index][1:] for index in keymaps])
    all_classes = np.concatenate([pieces[index].classes for index in keymaps])
    keys, first = np.unique(all_keys, return_index=True)
    return Joined(keymaps, keys, all_classes[first])


def _window(
    store: WorkStore, chunks: ChunkPlan, index: ChunkIndex, keymaps: dict[ChunkIndex, np.ndarray], halo: int
) -> tuple[np.ndarray, np.ndarray]:
    """Object keys and labels of chunk ``index`` with ``halo`` pixels of its neighbours around it (only where the
    raster goes on; the neighbours' part from the edges they stored)."""
    i, j = index
    rows, cols = chunks.rows.span(i), chunks.cols.span(j)
    top = halo if i > 0 else 0
    left = halo if j > 0 else 0
    bottom = min(halo, chunks.grid.height - rows.stop)
    right = min(halo, chunks.grid.width - cols.stop)
    shape = (top + rows.size + bottom, left + cols.size + right)
    keys = np.zeros(shape, np.int64)
    labels = np.zeros(shape, np.uint8)
    keys[top : top + rows.size, left : left + cols.size] = keymaps[index][store.get("seeds", rows, cols)]
    labels[top : top + rows.size, left : left + cols.size] = store.get("labels", rows, cols)
    if halo == 0:
        return keys, labels
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            neighbour = (i + di, j + dj)
            if (di, dj) == (0, 0) or neighbour not in keymaps:
                continue
            table = store.get_table("pieces", neighbour)
            side = {-1: "bottom", 1: "top"}.get(di) or {-1: "right", 1: "left"}[dj]
            seeds, values = table[f"seeds_{side}"], table[f"labels_{side}"]
            ys = {-1: slice(0, top), 0: slice(top, top + rows.size), 1: slice(top + rows.size, shape[0])}[di]
            xs = {-1: slice(0, left), 0: slice(left, left + cols.size), 1: slice(left + cols.size, shape[1])}[dj]
            h, w = ys.stop - ys.start, xs.stop - xs.start
            # A top/bottom strip spans the neighbour's columns; a left/right strip its rows.
            src_y = slice(seeds.shape[0] - h, None) if di == -1 else slice(0, h)
            src_x = slice(seeds.shape[1] - w, None) if dj == -1 else slice(0, w)
            keys[ys, xs] = keymaps[neighbour][seeds[src_y, src_x]]
            labels[ys, xs] = values[src_y, src_x]
    return keys, labels


@portable_errors
def grow_and_measure(
    store: WorkStore, chunks: ChunkPlan, index: ChunkIndex, keymaps: dict[ChunkIndex, np.ndarray]
) -> None:
    """Give the chunk's boundary pixels to the nearest seed, store each pixel's object and the measures, flag it."""
    spec = store.instances
    assert spec is not None
    i, j = index
    rows, cols = chunks.rows.span(i), chunks.cols.span(j)
    keys, labels = _window(store, chunks, index, keymaps, spec.halo)
    if spec.growth_classes:
        keys = grow(keys, np.isin(labels, spec.growth_classes), spec.radius)
    top = spec.halo if i > 0 else 0
    left = spec.halo if j > 0 else 0
    own = keys[top : top + rows.size, left : left + cols.size]
    confidence = store.get("confidence", rows, cols)
    found = measure(own, confidence, (rows.start, cols.start), chunks.grid.width)
    # Each pixel's object as its 1-based row in the chunk's table (sorted by key): 4 bytes, and ids by a lookup.
    table_rows = np.zeros(own.shape, np.uint32)
    inside = own != 0
    table_rows[inside] = np.searchsorted(found.key, own[inside]) + 1
    store.put("object_rows", rows, cols, table_rows)
    store.put_table("objects", index, found.columns())
    store.flag("objects", index)


@dataclass(frozen=True)
class Objects:
    """Every object of the raster: its measures (in id order), id and class."""

    measures: Measures
    ids: np.ndarray  # uint32, 1..N
    classes: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.measures)

    def ids_of(self, keys: np.ndarray) -> np.ndarray:
        """The ids of objects by their keys; 0 for a key of no object (one dropped as too small)."""
        if not len(self.measures):
            return np.zeros(keys.shape, np.uint32)
        order = np.argsort(self.measures.key)
        position = np.minimum(np.searchsorted(self.measures.key, keys, sorter=order), len(order) - 1)
        found = order[position]
        return np.where(self.measures.key[found] == keys, self.ids[found], 0).astype(np.uint32)


def number(store: WorkStore, chunks: ChunkPlan, joined: Joined, min_area: int = 0) -> Objects:
    """Every object of at least ``min_area`` pixels, measured over all its chunks, numbered 1..N in raster order
    of its first pixel (smaller ones, fragments, become background)."""
    combined = combine([Measures(**store.get_table("objects", index)) for index in chunk_indices(chunks)])
    if min_area > 1:
        kept = combined.area >= min_area
        combined = Measures(**{name: getattr(combined, name)[kept] for name in COLUMNS})
    if len(combined) > MAX_OBJECTS:
        raise ValueError(f"{len(combined)} objects do not fit a uint32 instance raster")
    order = np.argsort(combined.first, kind="stable")
    ordered = Measures(**{name: getattr(combined, name)[order] for name in COLUMNS})
    classes = joined.classes[np.searchsorted(joined.keys, ordered.key)]
    return Objects(ordered, np.arange(1, len(ordered) + 1, dtype=np.uint32), classes)


@portable_errors
def write_ids(store: WorkStore, chunks: ChunkPlan, index: ChunkIndex, ids: np.ndarray) -> None:
    """Write the chunk's instance ids (``ids``: the id of each row of its objects table, 0 for one dropped), then
    flag it."""
    i, j = index
    rows, cols = chunks.rows.span(i), chunks.cols.span(j)
    by_row = np.concatenate([np.zeros(1, np.uint32), ids.astype(np.uint32)])
    instances = by_row[store.get("object_rows", rows, cols)]
    instances[store.get("labels", rows, cols) == NODATA_UINT8] = NODATA_UINT32
    store.put("instances", rows, cols, instances)
    store.flag("ids", index)


def chunk_ids(store: WorkStore, index: ChunkIndex, objects: Objects) -> np.ndarray:
    """The ids of the objects of chunk ``index``, row by row of its table: all ``write_ids`` needs of them."""
    return objects.ids_of(store.get_table("objects", index)["key"])


__all__ = ["Joined", "Objects", "Span", "chunk_ids", "grow_and_measure", "join", "number", "write_ids"]
