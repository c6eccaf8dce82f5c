"""Overlap-add sums: Σ w from the tiles that ran, and the blend of a chunk's contributions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tiling import Accumulator, Contribution, blend, window_profile
from tiling.blend import tile_weight_sum
from tiling.plan import Span


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
)
def test_weight_sum_equals_the_tiles_added_one_by_one(
    kind: str, tile: int, ys: list[int], xs: list[int], drop: int
) -> None:
    profile = window_profile(kind, tile)
    grid = [(y, x) for y in ys for x in xs]
    # A full grid takes the separable path; with tiles dropped (skipped tiles) the sum goes tile by tile.
    for origins in (grid, grid[drop:] if drop < len(grid) else grid[:1]):
        shape = (max(ys) + tile + 3, max(xs) + tile + 1)
        np.testing.assert_allclose(
            tile_weight_sum(origins, profile, shape), _one_by_one(origins, profile, shape), rtol=1e-6, atol=1e-7
        )


def test_accumulator_sums_weighted_probabilities_and_weights() -> None:
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
    local = [(y - 10, x - 5) for y, x in origins]
    np.testing.assert_allclose(piece.den, _one_by_one(local, profile, (20, 20))[:10, 5:], rtol=1e-6)


def test_blend_in_place_equals_blend_into_new_arrays_and_marks_uncovered_pixels() -> None:
    rng = np.random.default_rng(1)
    rows, cols = Span(4, 10), Span(0, 5)

    def own() -> Contribution:
        den = rng.random((6, 5), dtype=np.float32) + 0.5
        den[0, 0] = 0.0  # no tile ran there
        return Contribution(4, 0, rng.random((2, 6, 5), dtype=np.float32) * den, den)

    first = own()
    spill = Contribution(4, 2, rng.random((2, 3, 3), dtype=np.float32), rng.random((3, 3), dtype=np.float32) + 0.1)
    fresh = blend(rows, cols, 2, [first, spill])
    in_place = blend(rows, cols, 2, [spill], into=Contribution(4, 0, first.num.copy(), first.den.copy()))
    np.testing.assert_array_equal(in_place, fresh)
    assert np.isnan(fresh[:, 0, 0]).all() and not np.isnan(fresh[:, 1:, :]).any()
    num, den = first.num.copy(), first.den.copy()
    num[:, 0:3, 2:5] += spill.num
    den[0:3, 2:5] += spill.den
    np.testing.assert_allclose(fresh[:, 1:], num[:, 1:] / den[1:], rtol=1e-6)
