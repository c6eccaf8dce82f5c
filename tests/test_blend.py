"""Overlap-add sums: Σ w from the tiles that ran, and the blend of a chunk's contributions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.graph import TileStats
from tiling import Accumulator, Contribution, OptionError, blend, window_profile
from tiling.blend import DIVISION_ROWS, TileCover, WeightSum
from tiling.plan import Span
from tiling.sum_buffers import zeros_outside_heap
from tiling.windows import WEIGHT_FLOOR


def _one_by_one(origins: list[tuple[int, int]], profile: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    tile, weight = profile.size, np.outer(profile, profile)
    den = np.zeros(shape, np.float32)
    for y, x in origins:
        den[y : y + tile, x : x + tile] += weight
    return den


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["gaussian", "cosine", "constant", "rim"]),
    st.integers(2, 24),
    st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True),
    st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True),
    st.integers(0, 8),
    st.tuples(st.integers(0, 30), st.integers(1, 40), st.integers(0, 30), st.integers(1, 40)),
)
def test_weight_sum_equals_the_tiles_added_one_by_one(
    kind: str, tile: int, ys: list[int], xs: list[int], drop: int, window: tuple[int, int, int, int]
) -> None:
    profile = window_profile(kind, tile)
    grid = [(y, x) for y in ys for x in xs]
    cover = TileCover(tuple(sorted(ys)), tuple(sorted(xs)))
    rows, cols = Span(window[0], window[0] + window[1]), Span(window[2], window[2] + window[3])
    shape = (max(ys) + tile + 3, max(xs) + tile + 1)
    # Every tile ran: the separable path; with tiles left out (skipped tiles) the sum goes tile by tile.
    for missing in ([], grid[:drop]):
        ran = [o for o in grid if o not in missing]
        whole = _one_by_one(ran, profile, (max(shape[0], rows.stop), max(shape[1], cols.stop)))
        weights = cover.weight_sum(rows, cols, profile, [*missing, (-99, -99)])  # an origin off the cover: ignored
        assert (weights.dense is None) == (not missing)
        expected = whole[rows.start : rows.stop, cols.start : cols.stop]
        np.testing.assert_allclose(weights.array(), expected, rtol=1e-6, atol=1e-7)


def test_accumulator_sums_weighted_probabilities() -> None:
    rng = np.random.default_rng(0)
    profile = window_profile("gaussian", 8)
    weight = np.outer(profile, profile)
    acc = Accumulator(Span(10, 30), Span(5, 25), 2, profile)
    origins = [(10, 5), (10, 11), (16, 5), (16, 11), (22, 17)]  # not a full grid: one tile on its own
    probs = rng.random((len(origins), 2, 8, 8), dtype=np.float32)
    expected_num = np.zeros((2, 20, 20), np.float32)
    for p, (y, x) in zip(probs, origins, strict=True):
        expected_num[:, y - 10 : y - 2, x - 5 : x + 3] += p * weight
    acc.add(probs[:3].copy(), origins[:3])
    acc.add(probs[3:].copy(), origins[3:])
    piece = acc.contribution(Span(0, 20), Span(10, 40), copy=True)
    assert piece is not None and (piece.row0, piece.col0) == (10, 10)
    np.testing.assert_allclose(piece.num, expected_num[:, :10, 5:], rtol=1e-6)


def test_blend_in_place_equals_blend_into_new_arrays_and_marks_uncovered_pixels() -> None:
    rng = np.random.default_rng(1)
    rows, cols = Span(4, 10), Span(0, 5)
    den = rng.random((6, 5), dtype=np.float32) + 0.5
    den[0, 0] = 0.0  # no tile ran there
    weights = WeightSum(np.ones(6, np.float32), np.ones(5, np.float32), den)
    first = Contribution(4, 0, rng.random((2, 6, 5), dtype=np.float32))
    spill = Contribution(4, 2, rng.random((2, 3, 3), dtype=np.float32))
    fresh = blend(rows, cols, 2, [first, spill], weights)
    in_place = blend(rows, cols, 2, [spill], weights, into=Contribution(4, 0, first.num.copy()))
    np.testing.assert_array_equal(in_place, fresh)
    assert np.isnan(fresh[:, 0, 0]).all() and not np.isnan(fresh[:, 1:, :]).any()
    num = first.num.copy()
    num[:, 0:3, 2:5] += spill.num
    np.testing.assert_allclose(fresh[:, 1:], num[:, 1:] / den[1:], rtol=1e-6)


def test_a_separable_weight_sum_divides_band_by_band_as_its_array_would() -> None:
    rng = np.random.default_rng(2)
    along_rows = rng.random(3 * DIVISION_ROWS + 5, dtype=np.float32) + 0.1
    along_cols = rng.random(17, dtype=np.float32) + 0.1
    along_cols[4] = 0.0  # a column no tile covers
    weights = WeightSum(along_rows, along_cols)
    num = rng.random((2, along_rows.size, along_cols.size), dtype=np.float32)
    divided = num.copy()
    weights.divide(divided)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = num / np.outer(along_rows, along_cols)
    assert np.isnan(divided[:, :, 4]).all()
    np.testing.assert_allclose(np.delete(divided, 4, axis=2), np.delete(expected, 4, axis=2), rtol=1e-6)


def test_the_default_gaussian_has_sigma_an_eighth_of_the_tile() -> None:
    d = np.arange(8) + 0.5 - 4  # pixel centres from the tile's centre; σ = 8 / 8 = 1
    expected = np.exp(-0.5 * d**2) / np.exp(-0.5 * 0.5**2)
    np.testing.assert_allclose(window_profile("gaussian", 8), expected, rtol=1e-6)
    rim = window_profile("rim", 16)  # the outer 2 px on each side at the floor, the rest the Gaussian
    np.testing.assert_array_equal(rim[[0, 1, 14, 15]], np.float32(WEIGHT_FLOOR))
    np.testing.assert_allclose(rim[2:14], window_profile("gaussian", 16)[2:14])


@pytest.mark.parametrize(
    ("kind", "size", "sigma", "message"),
    [
        ("gaussian", 0, 0.125, "window size must be positive, got 0"),
        ("constant", -1, 0.125, "window size must be positive, got -1"),
        ("gaussian", 8, 0.0, "sigma must be a positive fraction of the tile, got 0.0"),
        ("rim", 8, -0.1, "sigma must be a positive fraction of the tile, got -0.1"),
        ("hann", 8, 0.125, r"unknown blend window 'hann' \(expected one of gaussian, cosine, constant, rim\)"),
    ],
)
def test_a_window_that_cannot_be_made_is_refused(kind: str, size: int, sigma: float, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        window_profile(kind, size, sigma)


def test_tile_counts_add_up_field_by_field() -> None:
    assert TileStats(1, 2, 3) + TileStats(10, 20, 30) == TileStats(11, 22, 33)


def test_an_extent_that_meets_the_sums_in_rows_only_gets_nothing() -> None:
    acc = Accumulator(Span(0, 10), Span(0, 10), 1, np.ones(4, np.float32))
    assert acc.contribution(Span(0, 5), Span(20, 30), copy=False) is None
    assert acc.contribution(Span(20, 30), Span(0, 5), copy=False) is None
    assert acc.contribution(Span(5, 20), Span(8, 20), copy=True) is not None


@pytest.mark.parametrize("shape", [(2, 3), (1, 2048, 2048)])
def test_sums_are_float32_whether_small_or_in_their_own_mapping(shape: tuple[int, ...]) -> None:
    sums = zeros_outside_heap(shape)
    assert sums.dtype == np.float32 and sums.shape == shape and not sums.any()
