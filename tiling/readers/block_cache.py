"""Decoded blocks of a remote tiled raster kept for the neighbouring chunks' halos.

A chunk reads its window with a halo that enters its neighbours' blocks; locally the page cache serves those
blocks again, remotely each one would be fetched again (GDAL reads a window's blocks with one multi-range
request, which bypasses its own cache of fetched ranges). So a remote reader reads whole blocks (the window
widened to block edges, which GDAL fetches whole anyway) and keeps the decoded blocks of each read's trailing
edge: its last ``TRAILING`` block rows and columns, which the next chunk to the right and the chunk below read
again when chunks run in raster order. A window whose blocks are all kept is not fetched at all.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..plan import Span

#: Decoded bytes (pixels and validity) a reader keeps.
BLOCK_CACHE_BYTES = 96 * 2**20
#: Block rows and columns at a read's bottom and right edges that are kept (a halo up to a block deep, plus the
#: block the chunk border falls in).
TRAILING = 2

#: Reads a block-aligned window: (rows, cols) -> (pixels (bands, rows, cols), validity (rows, cols)).
WindowRead = Callable[[Span, Span], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of a ``height`` × ``width`` raster stored in ``block_rows`` × ``block_cols`` blocks."""

    height: int
    width: int
    block_rows: int
    block_cols: int

    def covering(self, rows: Span, cols: Span) -> tuple[range, range]:
        """Indices of the block rows and block columns that a window touches."""
        return (
            range(rows.start // self.block_rows, math.ceil(rows.stop / self.block_rows)),
            range(cols.start // self.block_cols, math.ceil(cols.stop / self.block_cols)),
        )

    def rows_of(self, first: int, last: int) -> Span:
        """Pixel rows of block rows ``first``..``last`` (inclusive), cut at the raster's edge."""
        return Span(first * self.block_rows, min((last + 1) * self.block_rows, self.height))

    def cols_of(self, first: int, last: int) -> Span:
        return Span(first * self.block_cols, min((last + 1) * self.block_cols, self.width))


class BlockCache:
    """Windowed reads through decoded blocks: kept blocks are copied, missing ones read in one window (the
    bounding box of the missing blocks) and the trailing ones kept; least recently used dropped past
    ``budget`` bytes."""

    def __init__(self, grid: BlockGrid, budget: int = BLOCK_CACHE_BYTES) -> None:
        self.grid, self.budget, self.held = grid, budget, 0
        self._blocks: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, rows: Span, cols: Span, read_window: WindowRead) -> tuple[np.ndarray, np.ndarray]:
        block_rows, block_cols = self.grid.covering(rows, cols)
        with self._lock:
            kept = {(i, j): self._blocks[(i, j)] for i in block_rows for j in block_cols if (i, j) in self._blocks}
            for key in kept:
                self._blocks.move_to_end(key)
        missing = [(i, j) for i in block_rows for j in block_cols if (i, j) not in kept]
        fetched = self._fetch(missing, block_rows, block_cols, read_window) if missing else {}
        blocks = {**kept, **fetched}
        first = blocks[(block_rows[0], block_cols[0])]
        data = np.empty((first[0].shape[0], rows.size, cols.size), first[0].dtype)
        valid = np.empty((rows.size, cols.size), bool)
        for (i, j), (block_data, block_valid) in blocks.items():
            r, c = self.grid.rows_of(i, i), self.grid.cols_of(j, j)
            r0, r1 = max(r.start, rows.start), min(r.stop, rows.stop)
            c0, c1 = max(c.start, cols.start), min(c.stop, cols.stop)
            src = (slice(r0 - r.start, r1 - r.start), slice(c0 - c.start, c1 - c.start))
            dst = (slice(r0 - rows.start, r1 - rows.start), slice(c0 - cols.start, c1 - cols.start))
            data[(slice(None), *dst)] = block_data[(slice(None), *src)]
            valid[dst] = block_valid[src]
        return data, valid

    def _fetch(
        self, missing: list[tuple[int, int]], block_rows: range, block_cols: range, read_window: WindowRead
    ) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
        """Read the bounding box of the ``missing`` blocks; keep the trailing ones of this read."""
        i0, i1 = min(i for i, _ in missing), max(i for i, _ in missing)
        j0, j1 = min(j for _, j in missing), max(j for _, j in missing)
        rows, cols = self.grid.rows_of(i0, i1), self.grid.cols_of(j0, j1)
        data, valid = read_window(rows, cols)
        fetched = {}
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                r, c = self.grid.rows_of(i, i), self.grid.cols_of(j, j)
                at_rows = slice(r.start - rows.start, r.stop - rows.start)
                at_cols = slice(c.start - cols.start, c.stop - cols.start)
                fetched[(i, j)] = (data[:, at_rows, at_cols], valid[at_rows, at_cols])
        trailing = [key for key in fetched if key[0] > block_rows[-1] - TRAILING or key[1] > block_cols[-1] - TRAILING]
        self._keep({key: fetched[key] for key in trailing})
        return fetched

    def _keep(self, blocks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]) -> None:
        with self._lock:
            for key, (data, valid) in blocks.items():
                copies = (data.copy(), valid.copy())  # a view would keep the whole window alive
                old = self._blocks.pop(key, None)
                if old is not None:
                    self.held -= old[0].nbytes + old[1].nbytes
                self._blocks[key] = copies
                self.held += copies[0].nbytes + copies[1].nbytes
            while self.held > self.budget and self._blocks:
                _, (data, valid) = self._blocks.popitem(last=False)
                self.held -= data.nbytes + valid.nbytes

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.held = 0
