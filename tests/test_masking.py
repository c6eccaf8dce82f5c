"""Valid-area masks: coarse grid geometry, tissue detection, mask rasters, and skip invariance — a masked run
equals an unmasked one wherever every tile covering a pixel ran."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from rasterio.warp import calculate_default_transform, reproject

from pipeline import graph, load_checkpoint, predict
from tiling import Span, TileGrid, open_raster
from tiling.masking import CoarseMask, mask_scale, raster_mask, tissue_mask

from .conftest import make_checkpoint, random_image, write_geotiff

TILE, OVERLAP = 64, 16


def test_crop_and_expand_match_a_full_upsampling() -> None:
    rng = np.random.default_rng(0)
    array = rng.random((13, 11)) > 0.5
    mask = CoarseMask(array, 8, 100, 83, "test")
    full = np.kron(array, np.ones((8, 8), bool))  # 104 x 88: the last cells reach past the raster
    for rows, cols in [(Span(0, 100), Span(0, 83)), (Span(17, 61), Span(30, 83)), (Span(90, 130), Span(70, 120))]:
        expanded = mask.crop(rows, cols).expand(rows, cols)
        expected = np.zeros((rows.size, cols.size), bool)  # False past the mask's cells (a window's padding)
        part = full[rows.start : rows.stop, cols.start : cols.stop]
        expected[: part.shape[0], : part.shape[1]] = part
        np.testing.assert_array_equal(expanded, expected)
    assert mask.valid_fraction == pytest.approx(full[:100, :83].mean())


def test_default_mask_scale() -> None:
    assert mask_scale(40_000, 40_000, 512) == 32  # 1250 cells a side
    assert mask_scale(40_000, 40_000, 128) == 16  # a tile still spans 8 cells
    assert mask_scale(300, 200, 64) == 1


def test_tissue_is_found_on_glass(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = np.full((3, 240, 320), 235, np.uint8) + rng.integers(0, 8, (3, 240, 320), dtype=np.uint8)  # glass
    yy, xx = np.mgrid[:240, :320]
    blob = (yy - 120) ** 2 / 70**2 + (xx - 150) ** 2 / 100**2 < 1
    image[:, blob] = np.array([170, 80, 150], np.uint8)[:, None] + rng.integers(0, 30, (3, blob.sum()), np.uint8)
    image[:, 10:12, 300:302] = np.array([120, 40, 90], np.uint8)[:, None, None]  # a speck of dust
    path = write_geotiff(tmp_path / "slide.tif", image, crs=None)
    mask = tissue_mask(open_raster(path), scale=2)
    assert mask.valid_fraction == pytest.approx(blob.mean(), abs=0.01)
    assert not mask.array[:10, 145:].any()  # the speck is cleaned up
    for channel in ("grey",):
        assert tissue_mask(open_raster(path), 2, channel).valid_fraction == pytest.approx(blob.mean(), abs=0.02)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A scene, a model, and a mask raster on the scene's grid: an L-shaped area with a ragged edge."""
    folder = tmp_path_factory.mktemp("masked")
    image = random_image((3, 260, 300), seed=7)
    scene = write_geotiff(folder / "scene.tif", image)
    area = np.zeros((260, 300), np.uint8)
    area[:120, :] = 1
    area[:, :60] = 1  # tiles at x = 48 see little of it: with min_valid its right edge is partly covered
    area[200:215, 200:230] = 1  # an island
    area[100:140, 90:300:7] = 1  # ragged
    write_geotiff(folder / "mask.tif", area[np.newaxis])
    checkpoint = make_checkpoint(folder / "model.safetensors", tile=TILE, depth=2, seed=3)
    return scene, checkpoint, area.astype(bool)


def _probs(scene: Path, checkpoint, out: Path, **options) -> np.ndarray:
    predict(scene, out, checkpoint, tile=TILE, overlap=OVERLAP, output_kind="probs", **options)
    return zarr.open_group(str(out), mode="r")["probs"][0]


def _tiles_run(area: np.ndarray, min_valid: float) -> tuple[np.ndarray, int]:
    """How many tiles that ran cover each pixel, and how many tiles ran (the rule documented for min_valid)."""
    grid = TileGrid(*area.shape, TILE, OVERLAP)
    covering_run = np.zeros(area.shape, np.int32)
    run = 0
    for t in grid.tiles():
        window = area[t.y : t.y + TILE, t.x : t.x + TILE]
        if window.any() and window.mean() >= min_valid:
            covering_run[t.y : t.y + TILE, t.x : t.x + TILE] += 1
            run += 1
    return covering_run, run


@pytest.mark.parametrize(("min_valid", "chunk"), [(0.0, 100), (0.3, 100), (0.3, 1000)])
def test_masked_output_equals_unmasked_where_every_covering_tile_ran(scene, tmp_path, min_valid, chunk) -> None:
    path, checkpoint_path, area = scene
    baseline = _probs(path, checkpoint_path, tmp_path / "all.zarr", chunk=chunk)
    checkpoint = load_checkpoint(checkpoint_path)
    seen: list[int] = []
    checkpoint.model.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]))
    mask_path = str(path.parent / "mask.tif")
    masked = _probs(
        path, checkpoint, tmp_path / "m.zarr", chunk=chunk, mask=mask_path, mask_scale=1, min_valid=min_valid
    )

    grid = TileGrid(*area.shape, TILE, OVERLAP)
    covering_all = np.zeros(area.shape, np.int32)
    for t in grid.tiles():
        covering_all[t.y : t.y + TILE, t.x : t.x + TILE] += 1
    covering_run, run = _tiles_run(area, min_valid)
    assert sum(seen) == run < grid.n_tiles  # exactly the tiles the rule keeps reached the model

    complete = area & (covering_run == covering_all)
    partial = area & (covering_run > 0) & (covering_run < covering_all)
    uncovered = area & (covering_run == 0)
    np.testing.assert_allclose(masked[complete], baseline[complete], atol=1e-5, rtol=0)
    assert np.isnan(masked[~area]).all()  # outside the mask: nodata
    assert np.isnan(masked[uncovered]).all()  # inside, but every covering tile had too few valid pixels
    assert np.isfinite(masked[partial]).all()  # blended from the tiles that ran
    if min_valid == 0:
        assert complete.sum() == area.sum()  # with no minimum, every valid pixel is exact
    else:
        assert partial.any() and uncovered.any()  # the case is really exercised


def test_chunks_without_valid_pixels_are_not_read(scene, tmp_path, monkeypatch) -> None:
    path, checkpoint, area = scene
    chunk_of_thread = threading.local()
    reads: dict[tuple[int, int], list[tuple[Span, Span]]] = {}
    reader_type = type(open_raster(path))
    original_read, original_infer = reader_type.read, graph.infer_chunk

    def infer_spy(reader, job, task, after=None):
        chunk_of_thread.index = task.index
        return original_infer(reader, job, task, after)

    def read_spy(self, rows: Span, cols: Span):
        reads.setdefault(chunk_of_thread.index, []).append((rows, cols))
        return original_read(self, rows, cols)

    monkeypatch.setattr(reader_type, "read", read_spy)
    monkeypatch.setattr(graph, "infer_chunk", infer_spy)
    report = predict(path, tmp_path / "o.tif", checkpoint, tile=TILE, overlap=OVERLAP, chunk=64,
                     mask=str(path.parent / "mask.tif"), mask_scale=1)  # fmt: skip
    assert report.chunks_unread > 0
    assert len(reads) == report.chunks - report.chunks_unread
    for windows in reads.values():  # a chunk may read its window in parts (see graph._read_parts)
        rows = slice(min(r.start for r, _ in windows), max(r.stop for r, _ in windows))
        cols = slice(min(c.start for _, c in windows), max(c.stop for _, c in windows))
        assert area[rows, cols].any()


def test_mask_raster_of_another_size_is_stretched_and_of_another_crs_is_warped(scene, tmp_path) -> None:
    path, _, area = scene
    reader = open_raster(path)
    # Half the size, no georeferencing: stretched over the input's extent.
    small = tmp_path / "half.tif"
    tifffile.imwrite(small, area[::2, ::2].astype(np.uint8) * 255)
    stretched = raster_mask(small, reader, 2)
    assert stretched.array.shape == (130, 150)
    assert np.mean(stretched.array == area[::2, ::2]) > 0.98

    # The same mask in geographic coordinates: warped back onto the scene's grid.
    with rasterio.open(path.parent / "mask.tif") as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        warped = np.zeros((height, width), np.uint8)
        reproject(rasterio.band(src, 1), warped, dst_transform=transform, dst_crs="EPSG:4326")
    geographic = tmp_path / "wgs84.tif"
    with rasterio.open(
        geographic, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
        crs="EPSG:4326", transform=transform,
    ) as dst:  # fmt: skip
        dst.write(warped, 1)
    back = raster_mask(geographic, reader, 1)
    assert np.mean(back.array == area) > 0.97


def test_wrong_aspect_mask_is_refused(scene, tmp_path) -> None:
    path, _, _ = scene
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.ones((100, 300), np.uint8))
    with pytest.raises(Exception, match="aspect ratios differ"):
        raster_mask(wrong, open_raster(path), 1)


def test_nodata_mask_skips_the_collar(tmp_path) -> None:
    image = random_image((3, 200, 260), seed=4)
    image[:, :, :130] = 0
    path = write_geotiff(tmp_path / "collar.tif", image, nodata=0)
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", tile=TILE, depth=2)
    plain = predict(path, tmp_path / "a.tif", checkpoint, tile=TILE, overlap=OVERLAP, chunk=64)
    masked = predict(path, tmp_path / "b.tif", checkpoint, tile=TILE, overlap=OVERLAP, chunk=64, mask="nodata")
    assert masked.chunks_unread > 0 and plain.chunks_unread == 0
    assert masked.tiles_run == plain.tiles_run
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_reduced_validity_is_any_valid_pixel_for_every_reader(tmp_path) -> None:
    image = random_image((1, 64, 64), seed=1)
    image[:] = 0
    image[0, 5, 9] = 200  # one valid pixel in cell (0, 1) of an 8 px grid
    geotiff = write_geotiff(tmp_path / "g.tif", image, nodata=0)
    plain = tmp_path / "p.tif"
    tifffile.imwrite(plain, image[0], extratags=[(42113, "s", 0, "0", True)])  # GDAL_NODATA
    for path in (geotiff, plain):
        _, valid = open_raster(path).read_reduced((8, 8), "average")
        expected = np.zeros((8, 8), bool)
        expected[0, 1] = True
        np.testing.assert_array_equal(valid, expected, err_msg=str(path))
