"""Polygons of the label map (``--vector``) and the PNG preview (``--preview``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.features import rasterize
from scipy.ndimage import uniform_filter
from skimage.measure import label as connected_components

from pipeline import predict
from tiling import Span, open_raster
from tiling.readers import TiffReader
from tiling.writers.geotiff import PALETTE
from tiling.writers.polygons import CLASS_REGION_SCHEMA, PolygonFrame, class_regions, polygonise, write_polygons
from tiling.writers.preview import write_preview

from .conftest import make_checkpoint, random_image, shared_file, write_geotiff
from .test_slides import write_pyramid


@pytest.fixture(scope="module")
def landsat_labels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-class label map of the Landsat scene on its grid: smoothed brightness classes (regions with holes),
    255 on the nodata collar; written like tilewise writes labels (uint8, nodata 255, the input's CRS)."""
    source = shared_file("geotiff/RGB.byte.tif")
    path = tmp_path_factory.mktemp("vector") / "labels.tif"
    with rasterio.open(source) as src:
        brightness = uniform_filter(src.read().astype(np.float32).mean(axis=0), 7)
        valid = src.dataset_mask() > 0
        profile = {**src.profile, "count": 1, "dtype": "uint8", "nodata": 255}
    cuts = np.percentile(brightness[valid], [50, 80])
    labels = np.digitize(brightness, cuts).astype(np.uint8)
    labels[~valid] = 255
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels, 1)
    return source, path


def _write(labels: Path, dest: Path, names: tuple[str, ...], min_area: float = 0.0, **options: object) -> int:
    """``write_polygons`` of class regions, in the label raster's own coordinates."""
    reader = open_raster(labels, bands=[1])
    frame = PolygonFrame.of(reader.info)
    reader.close()
    return write_polygons(labels, dest, frame, CLASS_REGION_SCHEMA, class_regions(names, min_area), **options)


def _read(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    import pyogrio.raw  # its own GDAL beside rasterio's: loaded only by the tests that read polygons

    meta, _, geometry, fields = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(geometry), fields[0]


def test_polygons_rasterise_back_to_the_labels_in_the_input_crs(landsat_labels, tmp_path: Path) -> None:
    source, labels_path = landsat_labels
    dest = tmp_path / "polygons.gpkg"
    count = _write(labels_path, dest, ("background", "a", "b"), window=128)
    meta, polygons, classes = _read(dest)
    assert count == len(polygons) > 0
    with rasterio.open(source) as src, rasterio.open(labels_path) as lab:
        assert rasterio.crs.CRS.from_user_input(meta["crs"]) == src.crs
        labels, transform, shape = lab.read(1), lab.transform, lab.shape
    assert set(np.unique(classes)) <= {1, 2}
    for value in (1, 2):
        drawn = rasterize(polygons[classes == value], out_shape=shape, transform=transform) > 0
        truth = labels == value
        iou = (drawn & truth).sum() / (drawn | truth).sum()
        assert iou >= 0.99, (value, iou)


def test_no_polygon_is_split_along_a_window_border(landsat_labels) -> None:
    _, labels_path = landsat_labels
    with rasterio.open(labels_path) as lab:
        labels = lab.read(1)
    whole = list(polygonise(labels_path, window=4096))  # one window: nothing to merge
    for window in (100, 128):
        pieces = list(polygonise(labels_path, window=window))
        for value in (1, 2):
            regions = connected_components(labels == value, connectivity=1).max()
            mine = [p.polygon for p in pieces if p.value == value]
            assert len(mine) == regions == sum(p.value == value for p in whole)  # one polygon per 4-connected region
            ids = rasterize(((poly, i + 1) for i, poly in enumerate(mine)), out_shape=labels.shape, dtype="int32")
            assert len(np.unique(ids[labels == value])) == regions  # ... and each polygon is one region
            np.testing.assert_array_equal(ids > 0, labels == value)


def test_min_area_and_geojson(landsat_labels, tmp_path: Path) -> None:
    _, labels_path = landsat_labels
    everything = _write(labels_path, tmp_path / "all.geojson", ("bg", "a", "b"), values=[0, 1, 2])
    large = _write(labels_path, tmp_path / "large.geojson", ("bg", "a", "b"), min_area=300.0**2 * 50)
    _, polygons, _ = _read(tmp_path / "large.geojson")
    assert 0 < large < everything
    assert shapely.area(polygons).min() >= 300.0**2 * 50
    _, _, all_classes = _read(tmp_path / "all.geojson")
    assert set(np.unique(all_classes)) == {0, 1, 2}


def test_predict_writes_polygons_and_preview(tmp_path: Path) -> None:
    image = random_image((3, 180, 220), seed=2)
    image[:, :, :60] = 0
    scene = write_geotiff(tmp_path / "s.tif", image, nodata=0)
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", classes=3, tile=64, depth=2, seed=1)
    report = predict(
        scene,
        tmp_path / "out.zarr",
        checkpoint,
        output_kind="both",
        vector=tmp_path / "p.gpkg",
        preview=tmp_path / "p.png",
        preview_size=100,
    )
    assert report.outputs == [tmp_path / "out.zarr", tmp_path / "p.png", tmp_path / "p.gpkg"]
    assert report.polygons and report.polygons > 0
    preview = np.asarray(Image.open(tmp_path / "p.png"))
    assert preview.shape == (60, 74, 3)  # 180 x 220 reduced by 3: the longest side fits in 100
    assert (preview[40:, :19] == 0).all()  # nodata input (60 of 220 columns): black, below the legend
    tinted = [np.all(np.abs(preview.astype(int) - PALETTE[c]) < 110, axis=2).any() for c in (1, 2)]
    assert any(tinted)


def test_preview_of_a_slide_reads_only_a_coarse_level(tmp_path: Path, monkeypatch) -> None:
    slide = write_pyramid(tmp_path / "slide.ome.tif", random_image((3, 512, 384), seed=3))
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", tile=64, depth=2)
    reads: list[tuple[str, int]] = []
    original = TiffReader.read

    def spy(self: TiffReader, rows: Span, cols: Span):
        reads.append((Path(self.path).name, self.level))
        return original(self, rows, cols)

    predict(slide, tmp_path / "o.tif", checkpoint, chunk=256, overlap=0)
    monkeypatch.setattr(TiffReader, "read", spy)
    write_preview(tmp_path / "p.png", open_raster(slide), tmp_path / "o.tif", None, ("bg", "fg"), size=120)
    assert {level for name, level in reads if name == "slide.ome.tif"} == {2}  # level 2 (128 x 96) is enough
    assert Image.open(tmp_path / "p.png").size == (77, 103)  # 384 x 512 reduced by 5 (fits in 120)
