"""The graph's small pure helpers, case by case (the end-to-end promises are in test_invariance/test_resume)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.graph import _read_parts, tile_is_valid
from tiling.plan import Span


@pytest.mark.parametrize(
    ("rows", "local", "split", "expected"),
    [
        # The first row of tiles starts 20 px into the window: its 64-px inputs end at 100 + 20 + 64.
        (Span(100, 400), [(20, 0), (20, 50), (80, 0)], True, [Span(100, 184), Span(100, 400)]),
        (Span(100, 400), [(20, 30)], True, [Span(100, 184), Span(100, 400)]),  # the row, not the column
        (Span(0, 84), [(20, 0)], True, [Span(0, 84)]),  # the first row needs the whole window: one read
        (Span(0, 300), [(0, 0)], True, [Span(0, 64), Span(0, 300)]),
        (Span(0, 300), [(0, 0)], False, [Span(0, 300)]),  # not split
        (Span(0, 300), [], True, [Span(0, 300)]),  # no tiles
    ],
)
def test_a_window_is_read_first_in_part_only_when_its_first_row_of_tiles_ends_inside_it(
    rows: Span, local: list[tuple[int, int]], split: bool, expected: list[Span]
) -> None:
    assert _read_parts(rows, local, 64, 1000, split) == expected


def test_the_raster_s_end_counts_as_the_window_s_end() -> None:
    assert _read_parts(Span(900, 1100), [(0, 0)], 100, 1000, True) == [Span(900, 1100)]  # 900 + 100 = the end
    assert _read_parts(Span(900, 1100), [(0, 0)], 60, 1000, True) == [Span(900, 960), Span(900, 1100)]


def test_a_tile_with_exactly_the_minimum_share_of_valid_pixels_runs() -> None:
    valid = np.zeros((8, 8), bool)
    valid[:4] = True  # half the tile's pixels
    assert tile_is_valid(valid, 0, 0, 8, 0.5)
    assert not tile_is_valid(valid, 0, 0, 8, 0.51)
    assert tile_is_valid(valid, 0, 0, 8, 0.0) and not tile_is_valid(np.zeros((8, 8), bool), 0, 0, 8, 0.0)
