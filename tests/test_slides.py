"""Slides through tifffile: pyramid levels, physical pixel size, reading by µm per pixel (exact area resampling),
reduced reads from coarse levels, undecodable tiles, and real slides (Aperio SVS, a flat RGB TIFF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from pipeline import load_checkpoint, predict
from tiling import OptionError, Span, open_raster
from tiling.errors import TilewiseWarning
from tiling.readers import ResampledReader, TiffReader
from tiling.readers.resample import area_weights

from .conftest import make_checkpoint, random_image, shared_file


def write_pyramid(path: Path, image: np.ndarray, levels: int = 3, pixel_um: float = 0.25) -> Path:
    """An OME-TIFF pyramid (sub-IFDs, JPEG tiles) of ``image`` (3, rows, cols), each level a 2x block mean."""
    pyramid = [image]
    for _ in range(levels - 1):
        prev = pyramid[-1].astype(np.float32)
        h, w = prev.shape[1] // 2 * 2, prev.shape[2] // 2 * 2
        pyramid.append(prev[:, :h, :w].reshape(3, h // 2, 2, w // 2, 2).mean(axis=(2, 4)).round().astype(np.uint8))
    with tifffile.TiffWriter(path) as tif:
        options = {"tile": (64, 64), "photometric": "rgb", "compression": "zlib"}
        metadata = {"axes": "CYX", "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um}
        tif.write(pyramid[0], subifds=levels - 1, metadata=metadata, **options)
        for level in pyramid[1:]:
            tif.write(level, subfiletype=1, **options)
    return path


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    image = random_image((3, 512, 384), seed=11)
    return write_pyramid(tmp_path_factory.mktemp("slide") / "slide.ome.tif", image), image


def test_levels_and_pixel_sizes_of_an_ome_pyramid(pyramid) -> None:
    path, image = pyramid
    reader = open_raster(path)
    assert isinstance(reader, TiffReader)
    assert reader.info.format == "OME-TIFF"
    assert [(lv.height, lv.width) for lv in reader.levels] == [(512, 384), (256, 192), (128, 96)]
    assert [lv.pixel_size_um for lv in reader.levels] == [(0.25, 0.25), (0.5, 0.5), (1.0, 1.0)]
    data, valid = reader.read(Span(10, 50), Span(20, 70))
    np.testing.assert_array_equal(data, image[:, 10:50, 20:70])
    assert valid.all()

    level2 = open_raster(path, level=2)
    assert (level2.info.height, level2.info.width, level2.info.pixel_size_um) == (128, 96, (1.0, 1.0))


@pytest.mark.parametrize(
    ("mpp", "level", "factor", "shape"),
    [
        (0.25, 0, None, (512, 384)),
        (0.5, 1, None, (256, 192)),
        (0.51, 1, None, (256, 192)),  # within the 5 % tolerance: read as is
        (0.75, 1, 1.5, (171, 128)),
        (4.0, 2, 4.0, (32, 24)),
    ],
)
def test_mpp_picks_the_closest_finer_level_and_resamples(pyramid, mpp, level, factor, shape) -> None:
    path, _ = pyramid
    reader = open_raster(path, mpp=mpp)
    assert (reader.info.height, reader.info.width) == shape
    assert reader.level == level
    if factor is None:
        assert isinstance(reader, TiffReader)
    else:
        assert isinstance(reader, ResampledReader)
        assert reader.factor == pytest.approx((factor, factor))
        assert reader.info.pixel_size_um == pytest.approx((mpp, mpp))


def test_area_resampling_is_a_block_mean_and_does_not_depend_on_the_window(pyramid) -> None:
    path, image = pyramid
    # A factor-2 resampling of level 0 (tolerance 0 forbids level 1) is the 2x2 block mean.
    reader = open_raster(path, mpp=0.5, mpp_tolerance=0.0)
    assert isinstance(reader, TiffReader)  # level 1 is exactly 0.5: no resampling needed
    resampled = ResampledReader(open_raster(path), (2.0, 2.0))
    data, _ = resampled.read(Span(0, 256), Span(0, 192))
    expected = image.astype(np.float32).reshape(3, 256, 2, 192, 2).mean(axis=(2, 4))
    assert np.abs(data.astype(np.float32) - expected).max() <= 0.5

    fractional = open_raster(path, mpp=0.75)
    whole, _ = fractional.read(Span(0, 171), Span(0, 128))
    for rows, cols in [(Span(17, 90), Span(5, 77)), (Span(100, 171), Span(64, 128)), (Span(3, 4), Span(0, 128))]:
        part, _ = fractional.read(rows, cols)
        np.testing.assert_array_equal(part, whole[:, rows.start : rows.stop, cols.start : cols.stop])


def test_area_weights_cover_each_output_pixel_once() -> None:
    index, weights = area_weights(0, 7, 2.5, 17)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert index.max() <= 16
    # Output pixel 1 covers [2.5, 5): half of pixel 2, all of 3 and 4.
    covered = {int(i): float(w) for i, w in zip(index[1], weights[1], strict=True) if w > 0}
    assert covered == pytest.approx({2: 0.2, 3: 0.4, 4: 0.4})


def test_reduced_reads_use_the_coarsest_sufficient_level(pyramid, monkeypatch) -> None:
    path, _ = pyramid
    levels_read: list[int] = []
    original = TiffReader.read

    def spy(self: TiffReader, rows: Span, cols: Span):
        levels_read.append(self.level)
        return original(self, rows, cols)

    monkeypatch.setattr(TiffReader, "read", spy)
    data, valid = open_raster(path).read_reduced((100, 75), "average")
    assert data.shape == (3, 100, 75) and valid.all()
    assert set(levels_read) == {2}  # 128 x 96 is the coarsest level that still has 100 x 75 pixels


def test_resolution_tags_give_the_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, np.zeros((10, 10), np.uint8), resolution=(20000, 20000), resolutionunit="CENTIMETER")
    assert open_raster(path).info.pixel_size_um == pytest.approx((0.5, 0.5))


def test_finer_than_the_finest_level_upsamples_the_same_in_any_window(pyramid) -> None:
    path, image = pyramid
    with pytest.warns(TilewiseWarning, match=r"finer than its finest level .*upsampled 2\.5x"):
        reader = open_raster(path, mpp=0.1)
    assert (reader.info.height, reader.info.width) == (round(image.shape[1] * 2.5), round(image.shape[2] * 2.5))
    assert reader.info.pixel_size_um == pytest.approx((0.1, 0.1))
    whole, _ = reader.read(Span(0, 200), Span(0, 240))
    part, _ = reader.read(Span(37, 151), Span(55, 203))
    np.testing.assert_array_equal(part, whole[:, 37:151, 55:203])
    # Bilinear: every upsampled pixel lies between the source pixels around it.
    assert whole.min() >= image.min() and whole.max() <= image.max()
    # A reduced read (a preview) finer than the slide's level 0 comes from the upsampled pixels.
    finer, valid = reader.read_reduced((image.shape[1] * 2, image.shape[2] * 2), "average")
    assert finer.shape == (3, image.shape[1] * 2, image.shape[2] * 2) and valid.all()
    assert finer.min() >= image.min() and finer.max() <= image.max()
    coarser, _ = reader.read_reduced((image.shape[1] // 4, image.shape[2] // 4), "average")
    assert coarser.shape == (3, image.shape[1] // 4, image.shape[2] // 4)


def test_the_model_pixel_size_chooses_the_read_unless_told_otherwise(pyramid) -> None:
    path, _ = pyramid
    assert open_raster(path, model_mpp=0.5).info.pixel_size_um == pytest.approx((0.5, 0.5))
    assert open_raster(path, model_mpp=0.5, level=0).info.pixel_size_um == pytest.approx((0.25, 0.25))
    assert open_raster(path, model_mpp=0.5, mpp=1.0).info.pixel_size_um == pytest.approx((1.0, 1.0))


def test_input_mpp_declares_a_pixel_size(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(plain)
    assert open_raster(plain).info.pixel_size_um is None
    reader = open_raster(plain, input_mpp=0.25, model_mpp=0.5)
    assert (reader.info.height, reader.info.width) == (20, 30)
    assert reader.info.pixel_size_um == pytest.approx((0.5, 0.5))


def test_level_and_mpp_errors(pyramid, tmp_path: Path) -> None:
    path, _ = pyramid
    with pytest.raises(OptionError, match=r"--level 3 does not exist.*3 level"):
        open_raster(path, level=3)
    with pytest.raises(OptionError, match="not both"):
        open_raster(path, level=1, mpp=0.5)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((20, 20, 3), np.uint8), photometric="rgb")
    with pytest.raises(OptionError, match="does not state"):
        open_raster(plain, mpp=1.0)


# Real slides ---------------------------------------------------------------------------------------------------


def test_svs_native_and_at_one_micron(tmp_path: Path) -> None:
    svs = shared_file("wsi/CMU-1-Small-Region.svs")
    native = open_raster(svs)
    assert native.info.format == "Aperio SVS"
    assert (native.info.height, native.info.width) == (2967, 2220)
    assert native.info.pixel_size_um == pytest.approx((0.499, 0.499))
    at_one = open_raster(svs, mpp=1.0)
    assert at_one.info.pixel_size_um == pytest.approx((1.0, 1.0))
    assert (at_one.info.height, at_one.info.width) == (round(2967 / 2.004), round(2220 / 2.004))
    # The resampled pixels are block means of the native ones (a 2.004 factor: nearly 2 x 2 blocks).
    fine, _ = native.read(Span(1000, 1200), Span(800, 1000))
    coarse, _ = at_one.read(Span(510, 560), Span(410, 460))
    block = fine.astype(np.float32)[:, 22:122, 22:122].reshape(3, 50, 2, 50, 2).mean(axis=(2, 4))
    assert np.abs(coarse.astype(np.float32) - block).mean() < 3.0


def test_svs_tissue_mask_skips_glass_tiles_that_never_reach_the_model(tmp_path: Path) -> None:
    svs = shared_file("wsi/CMU-1-Small-Region.svs")
    checkpoint = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", tile=128, depth=2))
    seen: list[int] = []
    checkpoint.model.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]))
    out = tmp_path / "svs.tif"
    report = predict(svs, out, checkpoint, mpp=1.0, mask="tissue", min_valid=0.05, overlap=0, chunk=256)
    assert report.pixel_size_um == pytest.approx((1.0, 1.0))
    assert report.valid_fraction is not None and 0.25 < report.valid_fraction < 0.5  # a strip of tissue on glass
    assert report.tiles_total == 12 * 9
    assert sum(seen) == report.tiles_run < report.tiles_total
    assert report.tiles_run + report.tiles_skipped == report.tiles_total
    assert report.skipped_fraction == pytest.approx(report.tiles_skipped / report.tiles_total)
    assert report.chunks_unread > 0  # chunks of glass on the left are never decoded
    labels = tifffile.imread(out)
    assert labels.shape == (1481, 1108)
    assert (labels[:200, :200] == 255).all()  # glass: nodata
    assert np.isin(labels[1200:1400, 500:700], [0, 1]).mean() > 0.9  # the tissue at the bottom: labelled


def test_flat_rgb_tiff_slide(tmp_path: Path) -> None:
    kidney = shared_file("wsi/kidney-48-5.tif")
    reader = open_raster(kidney)
    assert isinstance(reader, TiffReader) and len(reader.levels) == 1
    assert reader.info.pixel_size_um is None
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", tile=128, depth=2)
    report = predict(kidney, tmp_path / "k.tif", checkpoint, mask="tissue", overlap=0, chunk=512)
    assert report.valid_fraction is not None and 0 < report.valid_fraction < 0.02  # one small fragment
    assert 0 < report.tiles_run <= 6
    labels = tifffile.imread(tmp_path / "k.tif")
    assert labels.shape == (901, 1493)
    assert (labels != 255).mean() == pytest.approx(report.valid_fraction, abs=1e-6)


@pytest.mark.parametrize(("mpp", "size"), [(None, 0.499), (1.0, 1.0)])
def test_svs_pixel_size_reaches_ome_tiff_and_ome_zarr(tmp_path: Path, mpp: float | None, size: float) -> None:
    from ome_types import from_tiff

    svs = shared_file("wsi/CMU-1-Small-Region.svs")
    model = make_checkpoint(tmp_path / "m.safetensors", tile=128, depth=2)
    options = {"mpp": mpp, "mask": "tissue", "overlap": 0, "chunk": 512, "output_kind": "both"}
    predict(svs, tmp_path / "out.ome.tif", model, **options)
    for name in ("out.ome.tif", "out_probs.ome.tif"):
        pixels = from_tiff(tmp_path / name).images[0].pixels
        assert (pixels.physical_size_x, pixels.physical_size_y) == (pytest.approx(size), pytest.approx(size))
    predict(svs, tmp_path / "out.ome.zarr", model, **options)
    group = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    for attrs in (group.attrs["ome"], group["labels/classes"].attrs["ome"]):
        datasets = attrs["multiscales"][0]["datasets"]
        assert datasets[0]["coordinateTransformations"][0]["scale"][-2:] == [pytest.approx(size)] * 2
        assert datasets[1]["coordinateTransformations"][0]["scale"][-2:] == [pytest.approx(2 * size)] * 2
