"""Output formats: COG, pyramidal OME-TIFF, OME-Zarr and Zarr, checked with the tools that read them."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr

from pipeline import predict
from tiling import OptionError
from tiling.writers import output_format
from tiling.writers.pyramid import downsample_mean, downsample_nearest, level_shapes

from .conftest import make_checkpoint, random_image, write_geotiff

SHAPE = (3, 600, 700)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("formats")
    image = random_image(SHAPE, seed=11)
    image[:, :40, :40] = 0
    scene = write_geotiff(folder / "scene.tif", image, nodata=0)
    model = make_checkpoint(folder / "m.safetensors", classes=3, tile=64)
    # A plain TIFF with a physical pixel size (0.25 µm), as a slide would have.
    slide = folder / "slide.tif"
    tifffile.imwrite(
        slide, np.moveaxis(image, 0, 2), photometric="rgb", resolution=(40000, 40000), resolutionunit="CENTIMETER"
    )

    def go(name: str, source: Path = scene, **options: object) -> Path:
        out = folder / name
        predict(source, out, model, chunk=256, output_kind="both", overwrite=True, **options)
        return out

    return go, scene, slide


def _levels_follow_level0(levels: list[np.ndarray], labels: bool, nodata: float) -> None:
    """Each level halves the previous one and holds its downsample."""
    for previous, level in itertools.pairwise(levels):
        assert level.shape[-2:] == tuple(-(-s // 2) for s in previous.shape[-2:])
        expected = downsample_nearest(previous) if labels else downsample_mean(previous, nodata)
        np.testing.assert_allclose(level, expected, atol=1e-6)


def test_cog_is_valid_and_keeps_georeferencing(run) -> None:
    from rio_cogeo.cogeo import cog_validate

    go, scene, _ = run
    out = go("out.tif")
    for path in (out, out.with_name("out_probs.tif")):
        valid, errors, _warnings = cog_validate(str(path))
        assert valid, errors
    with rasterio.open(scene) as src, rasterio.open(out) as cog, rasterio.open(out.with_name("out_probs.tif")) as p:
        assert cog.crs == src.crs and cog.transform == src.transform
        assert cog.overviews(1) and p.overviews(1)
        labels = cog.read(1)
        # Label overviews are nearest: the top-left pixel of each 2x2 block.
        overview = cog.read(1, out_shape=(cog.height // 2, cog.width // 2))
        np.testing.assert_array_equal(overview, labels[::2, ::2][: overview.shape[0], : overview.shape[1]])
        assert (labels[:40, :40] == 255).all()


@pytest.mark.parametrize("fmt", ["cog", "geotiff"])
def test_class_maps_are_deflated_without_a_predictor_and_probabilities_with_one(run, fmt: str) -> None:
    go, _, _ = run
    out = go(f"predictor_{fmt}.tif", format=fmt)
    for path, predictors in ((out, {1}), (out.with_name(f"{out.stem}_probs.tif"), {2, 3})):
        with tifffile.TiffFile(path) as tif:
            assert {int(page.predictor) for page in tif.pages} <= predictors, path.name
            assert {int(page.compression) for page in tif.pages} == {8}  # deflate, every level


def test_ome_tiff_pyramid_and_metadata(run) -> None:
    from ome_types import from_tiff

    go, _, slide = run
    out = go("slide.ome.tif", source=slide)
    probs_path = out.with_name("slide_probs.ome.tif")
    ome = from_tiff(probs_path)
    pixels = ome.images[0].pixels
    assert pixels.size_c == 3 and [c.name for c in pixels.channels] == ["p(class0)", "p(class1)", "p(class2)"]
    assert pixels.physical_size_x == pytest.approx(0.25) and pixels.physical_size_y == pytest.approx(0.25)
    with tifffile.TiffFile(probs_path) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    assert len(levels) == len(level_shapes(600, 700))
    _levels_follow_level0(levels, labels=False, nodata=float("nan"))
    with tifffile.TiffFile(out) as tif:
        label_levels = [level.asarray() for level in tif.series[0].levels]
    assert from_tiff(out).images[0].pixels.physical_size_x == pytest.approx(0.25)
    _levels_follow_level0(label_levels, labels=True, nodata=255)
    np.testing.assert_array_equal(label_levels[0], np.argmax(levels[0], axis=0))


def test_ome_zarr_opens_with_ome_zarr_py(run) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    go, _, slide = run
    out = go("slide.ome.zarr", source=slide)
    nodes = list(Reader(parse_url(str(out)))())
    image = next(n for n in nodes if n.metadata.get("name") == "probs")
    label = next(n for n in nodes if n.metadata.get("name") == "classes")
    probs = [np.asarray(level) for level in image.data]
    labels = [np.asarray(level) for level in label.data]
    assert probs[0].shape == (3, 600, 700) and labels[0].shape == (600, 700)
    assert len(probs) == len(labels) == len(level_shapes(600, 700))
    _levels_follow_level0(probs, labels=False, nodata=float("nan"))
    _levels_follow_level0(labels, labels=True, nodata=255)
    ome = zarr.open_group(str(out), mode="r").attrs["ome"]
    scale = ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([1.0, 0.5, 0.5])  # 0.25 µm at level 0, doubled at level 1
    assert ome["multiscales"][0]["axes"][1]["unit"] == "micrometer"
    assert "tilewise_run" not in zarr.open_group(str(out), mode="r").attrs


def test_plain_zarr_has_no_work_store_leftovers(run) -> None:
    go, _, _ = run
    out = go("plain.zarr")
    group = zarr.open_group(str(out), mode="r")
    assert sorted(name for name, _ in group.members()) == ["labels", "probs"]
    assert "tilewise_run" not in group.attrs
    assert not out.with_name("plain.zarr.partial").exists()


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.tif", "cog"), ("a.TIFF", "cog"), ("a.ome.tif", "ome-tiff"), ("a.ome.zarr", "ome-zarr"), ("a.zarr", "zarr")],
)
def test_format_follows_the_name(name: str, fmt: str) -> None:
    assert output_format(Path(name)).name == fmt


def test_format_flag_and_mismatches() -> None:
    assert output_format(Path("a.tif"), explicit="geotiff").name == "geotiff"
    assert output_format(Path("a.zarr"), explicit="ome-zarr").name == "ome-zarr"
    with pytest.raises(OptionError, match="does not fit"):
        output_format(Path("a.zarr"), explicit="cog")
    with pytest.raises(OptionError, match="cannot tell"):
        output_format(Path("a.png"))


def test_plain_geotiff_has_no_overviews(run) -> None:
    go, _, _ = run
    out = go("plain.tif", format="geotiff")
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == []
        assert ds.profile["tiled"]


def test_downsampling_rules() -> None:
    labels = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint8)
    np.testing.assert_array_equal(downsample_nearest(labels), [[1, 3], [7, 9]])
    probs = np.array([[[0.2, 0.4, np.nan], [0.6, np.nan, np.nan]]], np.float32)
    np.testing.assert_allclose(downsample_mean(probs, np.nan), [[[0.4, np.nan]]])
    uint8 = np.array([[10, 20], [255, 30]], np.uint8)
    assert downsample_mean(uint8, 255)[0, 0] == 20
    assert level_shapes(1000, 300) == [(1000, 300), (500, 150), (250, 75)]


def test_labels_written_into_a_source_ome_zarr_image(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    source = tmp_path / "slide.ome.zarr"
    image = random_image((3, 300, 400), seed=4)
    group = zarr.open_group(str(source), mode="w", zarr_format=3)
    write_image(image, group, axes="cyx", axes_units={"y": "micrometer", "x": "micrometer"})
    ome = group.attrs["ome"]  # a 0.25 µm scanner: scale every level's y and x
    for dataset in ome["multiscales"][0]["datasets"]:
        scale = dataset["coordinateTransformations"][0]["scale"]
        scale[1:] = [v * 0.25 for v in scale[1:]]
    group.attrs["ome"] = ome
    model = make_checkpoint(tmp_path / "m.safetensors", tile=64)
    report = predict(source, source / "labels" / "tilewise", model)
    assert report.format == "ngff-labels" and report.pixel_size_um == pytest.approx((0.25, 0.25))
    nodes = list(Reader(parse_url(str(source)))())
    picture = next(n for n in nodes if n.metadata.get("name") == "image")
    label = next(n for n in nodes if n.metadata.get("name") == "tilewise")
    assert [d.shape[-2:] for d in label.data] == [d.shape[-2:] for d in picture.data]
    levels = [np.asarray(d) for d in label.data]
    np.testing.assert_array_equal(levels[1], levels[0][::2, ::2])
    assert zarr.open_group(str(source / "labels"), mode="r").attrs["ome"]["labels"] == ["tilewise"]
    with pytest.raises(OptionError, match="holds one map"):
        predict(source, source / "labels" / "both", model, output_kind="both")
