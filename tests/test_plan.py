"""The chunk plan: every tile owned by exactly one chunk, and overhangs routed to the right neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiling import ChunkPlan, OptionError, TileGrid


@st.composite
def plans(draw: st.DrawFn) -> ChunkPlan:
    tile = draw(st.integers(4, 64))
    grid = TileGrid(draw(st.integers(1, 300)), draw(st.integers(1, 300)), tile, draw(st.integers(0, tile - 1)))
    return ChunkPlan(grid, (draw(st.integers(4, 200)), draw(st.integers(4, 200))))


@settings(max_examples=300, deadline=None)
@given(plans())
def test_each_tile_is_owned_by_exactly_one_chunk(plan: ChunkPlan) -> None:
    owned = [t for i in range(plan.shape[0]) for j in range(plan.shape[1]) for t in plan.tiles_owned(i, j)]
    assert sorted(owned) == sorted((t.y, t.x) for t in plan.grid.tiles())


@settings(max_examples=300, deadline=None)
@given(plans())
def test_overhangs_reach_exactly_the_chunks_that_list_them_as_sources(plan: ChunkPlan) -> None:
    for axis in (plan.rows, plan.cols):
        spans = [axis.span(j) for j in range(axis.n_chunks)]
        sources = [set(axis.sources(j)) for j in range(axis.n_chunks)]
        for i in range(axis.n_chunks):
            extent = axis.extent(i)
            # The extent holds every owned tile in full.
            assert all(extent.start <= o and o + axis.tile <= extent.stop for o in axis.owned(i))
            destinations = set(axis.destinations(i))
            for j, span in enumerate(spans):
                meets = span.intersect(extent) is not None
                assert (j in destinations) == meets
                assert (i in sources[j]) == meets


@settings(max_examples=300, deadline=None)
@given(plans())
def test_the_tiles_covering_a_chunk_are_those_its_sources_own_that_meet_it(plan: ChunkPlan) -> None:
    for axis in (plan.rows, plan.cols):
        for j in range(axis.n_chunks):
            span = axis.span(j)
            meeting = tuple(o for o in axis.origins if o < span.stop and o + axis.tile > span.start)
            assert axis.covering(j) == meeting
            assert set(meeting) <= {o for i in axis.sources(j) for o in axis.owned(i)}


@settings(max_examples=100, deadline=None)
@given(plans())
def test_chunks_tile_the_raster(plan: ChunkPlan) -> None:
    rows, cols = plan.chunks
    assert sum(rows) == plan.grid.height and sum(cols) == plan.grid.width
    assert all(r > 0 for r in rows) and all(c > 0 for c in cols)
    seen = np.zeros((plan.grid.height, plan.grid.width), dtype=int)
    for i in range(plan.shape[0]):
        for j in range(plan.shape[1]):
            r, c = plan.rows.span(i), plan.cols.span(j)
            seen[r.start : r.stop, c.start : c.stop] += 1
    assert (seen == 1).all()


def test_a_chunk_must_hold_a_pixel() -> None:
    from tiling.plan import AxisPlan

    assert AxisPlan(10, 4, 1, (0, 3, 6)).n_chunks == 10
    for chunk in (0, -4):
        with pytest.raises(OptionError, match="chunk size must be positive"):
            AxisPlan(10, 4, chunk, (0, 3, 6))
