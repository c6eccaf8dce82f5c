"""Readers: windowed reads, validity masks (nodata, internal masks, NaN) and band selection per format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr

from tiling import InputError, Span, open_raster
from tiling.readers import GdalReader, TiffReader, ZarrReader

from .conftest import random_image, write_geotiff


def test_geotiff_window_and_nodata_mask(tmp_path: Path) -> None:
    image = random_image((3, 100, 120))
    image[:, 10:20, 30:40] = 0
    path = write_geotiff(tmp_path / "a.tif", image, nodata=0)
    reader = open_raster(path)
    assert isinstance(reader, GdalReader)
    data, valid = reader.read(Span(5, 25), Span(25, 50))
    np.testing.assert_array_equal(data, image[:, 5:25, 25:50])
    expected = np.ones((20, 25), bool)
    expected[5:15, 5:15] = False
    np.testing.assert_array_equal(valid, expected)
    assert reader.info.crs is not None and reader.info.transform is not None


@pytest.mark.parametrize("nodata", [0, 7])
def test_a_pixel_is_valid_where_any_band_differs_from_nodata(tmp_path: Path, nodata: int) -> None:
    image = np.full((3, 16, 16), 100, np.uint8)
    image[:, :4] = nodata  # every band nodata: invalid
    image[0, 4:8] = nodata  # one band nodata, the others not: valid
    image[1:, 8:12] = nodata  # two bands nodata: valid
    reader = open_raster(write_geotiff(tmp_path / "n.tif", image, nodata=nodata))
    _, valid = reader.read(Span(0, 16), Span(0, 16))
    expected = np.ones((16, 16), bool)
    expected[:4] = False
    np.testing.assert_array_equal(valid, expected)


def test_internal_mask_marks_invalid_pixels(tmp_path: Path) -> None:
    image = random_image((3, 64, 64))
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_geotiff(path, image)
        with rasterio.open(path, "r+") as ds:
            mask = np.full((64, 64), 255, np.uint8)
            mask[:32] = 0
            ds.write_mask(mask)
    _, valid = open_raster(path).read(Span(0, 64), Span(0, 64))
    assert not valid[:32].any() and valid[32:].all()


def test_nan_is_invalid_in_float_input(tmp_path: Path) -> None:
    image = random_image((2, 50, 50)).astype(np.float32)
    image[1, 3, 4] = np.nan
    path = write_geotiff(tmp_path / "f.tif", image)
    _, valid = open_raster(path).read(Span(0, 50), Span(0, 50))
    assert not valid[3, 4] and valid.sum() == 50 * 50 - 1


def test_band_selection_and_out_of_range_band(tmp_path: Path) -> None:
    image = random_image((4, 30, 30))
    path = write_geotiff(tmp_path / "b.tif", image)
    data, _ = open_raster(path, bands=[4, 2]).read(Span(0, 30), Span(0, 30))
    np.testing.assert_array_equal(data, image[[3, 1]])
    with pytest.raises(InputError, match="band 5 does not exist"):
        open_raster(path, bands=[5])


@pytest.mark.parametrize("layout", ["YXS", "SYX", "YX"])
def test_plain_tiff_goes_through_tifffile(tmp_path: Path, layout: str) -> None:
    image = random_image((3, 70, 90))
    path = tmp_path / "plain.tif"
    if layout == "YXS":
        tifffile.imwrite(path, np.moveaxis(image, 0, 2), photometric="rgb", tile=(32, 32))
    elif layout == "SYX":
        tifffile.imwrite(path, image, photometric="rgb", planarconfig="separate")
    else:
        image = image[:1]
        tifffile.imwrite(path, image[0])
    reader = open_raster(path)
    assert isinstance(reader, TiffReader)
    data, valid = reader.read(Span(10, 50), Span(20, 85))
    np.testing.assert_array_equal(data, image[:, 10:50, 20:85])
    assert valid.all()


def test_tiff_resolution_becomes_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, np.zeros((10, 10), np.uint8), resolution=(20000, 20000), resolutionunit="CENTIMETER")
    assert open_raster(path).info.pixel_size_um == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("shape", [(3, 40, 50), (40, 50)])
def test_zarr_array(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(16,) * len(shape))
    reader = open_raster(tmp_path / "a.zarr")
    assert isinstance(reader, ZarrReader)
    out, valid = reader.read(Span(5, 30), Span(10, 45))
    expected = data[..., 5:30, 10:45] if data.ndim == 3 else data[np.newaxis, 5:30, 10:45]
    np.testing.assert_array_equal(out, expected)
    assert valid.all()


def test_readers_survive_pickling(tmp_path: Path) -> None:
    import pickle

    image = random_image((3, 40, 40))
    path = write_geotiff(tmp_path / "p.tif", image)
    reader = open_raster(path)
    reader.read(Span(0, 10), Span(0, 10))
    clone = pickle.loads(pickle.dumps(reader))
    data, _ = clone.read(Span(0, 40), Span(0, 40))
    np.testing.assert_array_equal(data, image)


@pytest.mark.parametrize("dtype", ["int8", "float64", "uint64"])
def test_unsupported_pixel_type_is_refused(tmp_path: Path, dtype: str) -> None:
    path = write_geotiff(tmp_path / "t.tif", np.zeros((1, 8, 8), dtype=dtype))
    with pytest.raises(InputError, match="pixel type"):
        open_raster(path)
