"""Outputs: GeoTIFF and Zarr, each kind and dtype, written only when the run succeeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from pipeline import predict
from tiling import OutputError
from tiling.writers.encode import NODATA_UINT8, to_labels, to_probs

from .conftest import make_checkpoint, random_image, write_geotiff


def test_labels_threshold_and_argmax() -> None:
    binary = np.array([[[0.2, 0.5, np.nan]]], np.float32)
    np.testing.assert_array_equal(to_labels(binary, 0.5), [[0, 1, NODATA_UINT8]])
    multi = np.array([[[0.1, np.nan]], [[0.7, np.nan]], [[0.2, np.nan]]], np.float32)
    np.testing.assert_array_equal(to_labels(multi, 0.5), [[1, NODATA_UINT8]])


def test_uint8_probabilities_keep_255_for_nodata() -> None:
    probs = np.array([[[0.0, 1.0, 0.5, np.nan]]], np.float32)
    np.testing.assert_array_equal(to_probs(probs, "uint8"), [[[0, 254, 127, 255]]])


@pytest.fixture
def run(tmp_path: Path):
    image = random_image((3, 150, 170))
    image[:, :20, :20] = 0
    scene = write_geotiff(tmp_path / "scene.tif", image, nodata=0)
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", classes=3, tile=32)

    def go(name: str, **options: object):
        return predict(scene, tmp_path / name, checkpoint, chunk=64, **options)

    return go, scene


def test_geotiff_both_kinds_keep_georeferencing(run, tmp_path: Path) -> None:
    go, scene = run
    report = go("out.tif", output_kind="both")
    assert report.outputs == [tmp_path / "out.tif", tmp_path / "out_probs.tif"]
    with (
        rasterio.open(scene) as src,
        rasterio.open(tmp_path / "out.tif") as lab,
        rasterio.open(tmp_path / "out_probs.tif") as prob,
    ):
        for ds in (lab, prob):
            assert ds.crs == src.crs and ds.transform == src.transform
            assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        assert lab.dtypes == ("uint8",) and lab.nodata == 255 and lab.colormap(1)[1][:3] != (0, 0, 0)
        assert prob.count == 3 and prob.dtypes[0] == "float32" and np.isnan(prob.nodata)
        probs, labels = prob.read(), lab.read(1)
    assert (labels[:20, :20] == 255).all() and np.isnan(probs[:, :20, :20]).all()
    valid = labels != 255
    np.testing.assert_array_equal(labels[valid], np.argmax(probs, axis=0)[valid])


def test_uint8_probability_geotiff_has_a_scale(run, tmp_path: Path) -> None:
    go, _ = run
    go("p8.tif", output_kind="probs", probs_dtype="uint8")
    with rasterio.open(tmp_path / "p8.tif") as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert ds.scales[0] == pytest.approx(1 / 254)


def test_zarr_group_holds_both_arrays_and_georeferencing(run, tmp_path: Path) -> None:
    go, scene = run
    go("out.zarr", output_kind="both")
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group["labels"].shape == (150, 170) and group["probs"].shape == (3, 150, 170)
    assert group["labels"].chunks == (64, 64)
    with rasterio.open(scene) as src:
        assert group.attrs["crs"] == src.crs.to_wkt()
        assert tuple(group.attrs["transform"]) == tuple(src.transform)[:6]
    assert group.attrs["class_names"] == ["class0", "class1", "class2"]


def test_existing_output_needs_overwrite_and_is_then_replaced(run, tmp_path: Path) -> None:
    go, _ = run
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "stale").write_text("old")
    with pytest.raises(OutputError, match="already exists"):
        go("out.zarr")
    go("out.zarr", overwrite=True)
    assert not (tmp_path / "out.zarr" / "stale").exists()
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".out.zarr*"))
