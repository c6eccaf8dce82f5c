"""The global tile grid and the blending windows, checked as properties over many shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiling import OptionError, TileGrid, axis_origins, resolve_overlap, window_2d, window_profile


@st.composite
def grids(draw: st.DrawFn) -> TileGrid:
    tile = draw(st.integers(1, 96))
    overlap = draw(st.integers(0, tile - 1))
    return TileGrid(draw(st.integers(1, 4 * tile + 40)), draw(st.integers(1, 4 * tile + 40)), tile, overlap)


@settings(max_examples=300, deadline=None)
@given(grids())
def test_every_pixel_is_covered_and_tiles_stay_inside(grid: TileGrid) -> None:
    covered = np.zeros((grid.padded_height, grid.padded_width), dtype=np.int32)
    for t in grid.tiles():
        assert 0 <= t.y <= grid.padded_height - grid.tile
        assert 0 <= t.x <= grid.padded_width - grid.tile
        covered[t.y : t.y + grid.tile, t.x : t.x + grid.tile] += 1
    assert (covered[: grid.height, : grid.width] > 0).all()
    assert grid.n_tiles == len(list(grid.tiles()))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 300), st.data())
def test_origins_are_sorted_unique_and_never_further_apart_than_the_stride(length: int, tile: int, data) -> None:
    stride = data.draw(st.integers(1, tile))
    origins = axis_origins(length, tile, stride)
    assert origins[0] == 0
    assert list(origins) == sorted(set(origins))
    assert all(b - a <= stride for a, b in itertools.pairwise(origins))
    # The last tile ends exactly at the raster's edge (or the raster is padded to one tile).
    assert origins[-1] + tile == max(length, tile)


def test_small_raster_gets_one_padded_tile() -> None:
    grid = TileGrid(20, 30, 64, 16)
    assert grid.shape == (1, 1)
    assert (grid.padded_height, grid.padded_width) == (64, 64)


def test_last_tile_is_shifted_back_inside() -> None:
    assert axis_origins(100, 64, 48) == (0, 36)
    assert axis_origins(112, 64, 48) == (0, 48)


@pytest.mark.parametrize(("overlap", "pixels"), [(0.25, 64), (0.5, 128), (64, 64), (0, 0), (100.0, 100)])
def test_overlap_as_fraction_or_pixels(overlap: float, pixels: int) -> None:
    assert resolve_overlap(overlap, 256) == pixels


@pytest.mark.parametrize("overlap", [256, 300, -1, 0.9999999])
def test_overlap_not_below_the_tile_is_refused(overlap: float) -> None:
    with pytest.raises(OptionError, match="overlap"):
        resolve_overlap(overlap, 256)


def test_zero_dimension_is_refused() -> None:
    with pytest.raises(OptionError, match="zero dimension"):
        TileGrid(0, 10, 8, 2)


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(10, 0, 8, 2), (-1, 10, 8, 2)])
def test_a_grid_without_pixels_is_refused(height: int, width: int, tile: int, overlap: int) -> None:
    with pytest.raises(OptionError, match="zero dimension"):
        TileGrid(height, width, tile, overlap)


def test_the_grid_s_argument_boundaries() -> None:
    assert TileGrid(1, 1, 1, 0).shape == (1, 1)  # the smallest raster and tile
    assert TileGrid(10, 10, 8, 7).stride == 1  # the largest overlap
    with pytest.raises(OptionError, match="tile must be positive"):
        TileGrid(10, 10, 0, 0)
    for overlap in (8, -1):
        with pytest.raises(OptionError, match=r"overlap \(.* px\) must be in \[0, tile=8\)"):
            TileGrid(10, 10, 8, overlap)


def test_the_axis_s_argument_boundaries() -> None:
    assert axis_origins(1, 8, 8) == (0,) and axis_origins(8, 8, 4) == (0,) and axis_origins(9, 8, 1) == (0, 1)
    for length, tile, stride in ((0, 8, 4), (10, 0, 4), (10, 8, 0)):
        with pytest.raises(OptionError):
            axis_origins(length, tile, stride)


@pytest.mark.parametrize(("overlap", "pixels"), [(1.0, 1), (0.0, 0), (255, 255), (0.5, 128), (2.0, 2)])
def test_overlap_at_the_boundaries_between_a_fraction_and_pixels(overlap: float, pixels: int) -> None:
    """A float below 1 is a share of the tile; 1.0 and more are pixels; the largest overlap is one below the tile."""
    assert resolve_overlap(overlap, 256) == pixels


@pytest.mark.parametrize("overlap", [True, False, "0.25", None, 1.5])
def test_overlap_that_is_no_number_of_pixels_or_share_is_refused(overlap: object) -> None:
    with pytest.raises(OptionError, match="overlap"):
        resolve_overlap(overlap, 256)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["gaussian", "cosine", "constant", "rim"]), st.integers(1, 300), st.floats(0.01, 2.0))
def test_window_weights_are_positive_everywhere(kind: str, size: int, sigma: float) -> None:
    weights = window_2d(kind, size, sigma)
    assert weights.shape == (size, size)
    assert weights.dtype == np.float32
    assert (weights > 0).all()
    assert weights.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])  # symmetric


def test_gaussian_follows_sigma() -> None:
    profile = window_profile("gaussian", 256, 0.125)
    centre = 128
    # One sigma (32 px) from the centre the weight is exp(-1/2).
    assert profile[centre + 32] == pytest.approx(np.exp(-0.5 * (32.5 / 32) ** 2), rel=1e-3)
    assert profile.min() == pytest.approx(1e-3)  # floored at the edges


def test_the_rim_window_floors_the_outer_eighth_and_is_gaussian_inside() -> None:
    rim, gaussian = window_profile("rim", 128, 0.125), window_profile("gaussian", 128, 0.125)
    assert (rim[:16] == np.float32(1e-3)).all() and (rim[-16:] == np.float32(1e-3)).all()
    np.testing.assert_array_equal(rim[16:-16], gaussian[16:-16])
    assert gaussian[15] > 10 * 1e-3  # what the rim takes away


def test_unknown_window_is_refused() -> None:
    with pytest.raises(OptionError, match="unknown blend window"):
        window_profile("triangle", 8)


def test_each_tile_knows_its_place_in_the_grid() -> None:
    grid = TileGrid(300, 170, 64, 16)
    tiles = list(grid.tiles())
    assert len(tiles) == len(grid.row_origins) * len(grid.col_origins)
    for tile in tiles:
        assert (grid.row_origins[tile.row], grid.col_origins[tile.col]) == (tile.y, tile.x)
    assert [(t.row, t.col) for t in tiles[:3]] == [(0, 0), (0, 1), (0, 2)]  # row by row


def test_the_tile_window_follows_its_sigma_and_defaults_to_an_eighth() -> None:
    size = 64
    np.testing.assert_array_equal(window_2d("gaussian", size), window_2d("gaussian", size, 0.125))
    narrow, wide = window_2d("gaussian", size, 0.125), window_2d("gaussian", size, 0.25)
    assert wide[0, size // 2] > narrow[0, size // 2]  # a wider Gaussian weighs the tile's edge more
    profile = window_profile("gaussian", size, 0.25)
    np.testing.assert_allclose(wide, np.outer(profile, profile))
