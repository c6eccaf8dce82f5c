"""The decoded-block cache of remote tiled rasters: reads through it equal direct reads, the trailing blocks of a
read are not fetched again by the next chunk's halo, and the kept bytes stay within the budget."""

from __future__ import annotations

import numpy as np
import pytest

from tiling.plan import Span
from tiling.readers.block_cache import BlockCache, BlockGrid

HEIGHT, WIDTH, BLOCK = 200, 230, 32


class Source:
    """A raster in memory read window by window, counting the pixels each read takes."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 255, (3, HEIGHT, WIDTH), dtype=np.uint8)
        self.valid = rng.random((HEIGHT, WIDTH)) > 0.1
        self.reads: list[tuple[Span, Span]] = []

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        assert rows.start % BLOCK == 0 and cols.start % BLOCK == 0, "reads are block-aligned"
        self.reads.append((rows, cols))
        return self.data[:, rows.start : rows.stop, cols.start : cols.stop].copy(), self.valid[
            rows.start : rows.stop, cols.start : cols.stop
        ].copy()

    def pixels_read(self) -> int:
        return sum(r.size * c.size for r, c in self.reads)


def _cache(budget: int = 2**30) -> BlockCache:
    return BlockCache(BlockGrid(HEIGHT, WIDTH, BLOCK, BLOCK), budget)


def test_reads_through_the_cache_equal_the_raster() -> None:
    source, cache = Source(), _cache()
    rng = np.random.default_rng(1)
    for _ in range(60):
        r0, c0 = int(rng.integers(0, HEIGHT - 1)), int(rng.integers(0, WIDTH - 1))
        rows = Span(r0, int(rng.integers(r0 + 1, HEIGHT + 1)))
        cols = Span(c0, int(rng.integers(c0 + 1, WIDTH + 1)))
        data, valid = cache.read(rows, cols, source.read)
        np.testing.assert_array_equal(data, source.data[:, rows.start : rows.stop, cols.start : cols.stop])
        np.testing.assert_array_equal(valid, source.valid[rows.start : rows.stop, cols.start : cols.stop])


def test_chunks_in_raster_order_fetch_each_block_once() -> None:
    """Chunks of 64 px with an 8-px halo, in raster order: the halos come from kept blocks, so the pixels
    fetched are those of the raster once, where without the cache each halo fetches its blocks again."""
    source, cache = Source(), _cache()
    chunk, halo = 64, 8
    for y in range(0, HEIGHT, chunk):
        for x in range(0, WIDTH, chunk):
            rows = Span(max(0, y - halo), min(HEIGHT, y + chunk + halo))
            cols = Span(max(0, x - halo), min(WIDTH, x + chunk + halo))
            data, _ = cache.read(rows, cols, source.read)
            np.testing.assert_array_equal(data, source.data[:, rows.start : rows.stop, cols.start : cols.stop])
    assert source.pixels_read() == HEIGHT * WIDTH
    assert cache.held > 0


def test_kept_blocks_stay_within_the_budget() -> None:
    block_bytes = BLOCK * BLOCK * (3 + 1)
    source, cache = Source(), _cache(budget=5 * block_bytes)
    for y in range(0, HEIGHT, 64):
        for x in range(0, WIDTH, 64):
            cache.read(Span(y, min(HEIGHT, y + 64)), Span(x, min(WIDTH, x + 64)), source.read)
            assert cache.held <= 5 * block_bytes
    fetched = source.pixels_read()
    assert fetched >= HEIGHT * WIDTH
    cache.clear()
    assert cache.held == 0


@pytest.mark.parametrize("rows, cols", [(Span(0, 1), Span(0, 1)), (Span(199, 200), Span(229, 230))])
def test_a_window_inside_one_block_at_either_corner(rows: Span, cols: Span) -> None:
    source, cache = Source(), _cache()
    data, valid = cache.read(rows, cols, source.read)
    assert data.shape == (3, 1, 1) and valid.shape == (1, 1)
    assert data[0, 0, 0] == source.data[0, rows.start, cols.start]
