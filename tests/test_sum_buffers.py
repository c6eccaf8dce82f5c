"""Chunk sums in mappings of their own: zeroed, reused once nothing refers to them, unmapped when released."""

from __future__ import annotations

import gc
import mmap

import numpy as np

from tiling.sum_buffers import OWN_MAPPING_BYTES, SPARE_SHARE, SumBuffers

SHAPE = (2, 1024, 1024)  # 8 MiB: a mapping of its own


def _mapping(array: np.ndarray) -> mmap.mmap:
    return array.base.base.obj  # a view of the flat array, which is over a memoryview of the mapping


def test_large_sums_live_in_their_own_mapping_and_start_at_zero() -> None:
    pool = SumBuffers()
    large = pool.zeros(SHAPE)
    assert isinstance(_mapping(large), mmap.mmap) and large.flags.writeable
    assert large.dtype == np.float32 and large.shape == SHAPE and not large.any()
    small = pool.zeros((OWN_MAPPING_BYTES // 8,))
    assert small.base is None and not small.any()
    assert pool.made == 1


def test_a_freed_mapping_is_reused_zeroed_by_the_next_array_of_its_size() -> None:
    pool = SumBuffers()
    first = pool.zeros(SHAPE)
    first += 1.5
    mapping = _mapping(first)
    del first
    gc.collect()
    assert pool.free_bytes == len(mapping)
    second = pool.zeros(SHAPE)
    assert _mapping(second) is mapping and not second.any()
    assert (pool.made, pool.reused, pool.free_bytes) == (1, 1, 0)


def test_a_view_keeps_its_mapping_out_of_the_pool() -> None:
    pool = SumBuffers()
    sums = pool.zeros(SHAPE)
    corner = sums[1, :10, :10]
    corner += 2.0
    del sums
    gc.collect()
    assert pool.free_bytes == 0  # the view still reads the mapping
    other = pool.zeros(SHAPE)
    assert _mapping(other) is not _mapping(corner)
    assert (corner == 2.0).all() and not other.any()
    del corner
    gc.collect()
    assert pool.free_bytes > 0


def test_a_smaller_array_takes_a_mapping_only_a_little_larger() -> None:
    pool = SumBuffers()
    rows = SHAPE[1]
    pool.zeros(SHAPE)  # freed at once
    gc.collect()
    near = pool.zeros((2, int(rows / (1 + SPARE_SHARE)) + 8, SHAPE[2]))  # within the spare share
    assert pool.reused == 1 and near.shape[1] < rows and not near.any()
    del near
    gc.collect()
    far = pool.zeros((2, rows // 2, SHAPE[2]))  # half the size: a mapping of its own
    assert pool.reused == 1 and pool.made == 2 and not far.any()


def test_the_pool_keeps_a_few_mappings_and_release_unmaps_them() -> None:
    pool = SumBuffers(kept=2)
    arrays = [pool.zeros(SHAPE) for _ in range(3)]
    del arrays
    gc.collect()
    assert pool.free_bytes == 2 * 4 * int(np.prod(SHAPE))
    pool.release()
    assert pool.free_bytes == 0
    pool.zeros(SHAPE)
    assert pool.made == 4 and pool.reused == 0


def test_the_pool_keeps_no_more_bytes_than_its_cap() -> None:
    size = 4 * int(np.prod(SHAPE))
    pool = SumBuffers(kept=4, kept_bytes=size + size // 2)
    arrays = [pool.zeros(SHAPE) for _ in range(3)]
    del arrays
    gc.collect()
    assert pool.free_bytes == size  # a second one would pass the cap
    too_large = SumBuffers(kept_bytes=size - 1)
    too_large.zeros(SHAPE)
    gc.collect()
    assert too_large.free_bytes == 0
