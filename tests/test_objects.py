"""Objects through ``predict`` and the CLI: the instance raster the same for any chunking, worker count and
resume; the object table equal to the raster; polygons one per object; QuPath detections on a slide's level 0."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr

from pipeline import load_checkpoint, predict
from pipeline.cli import main
from sample_data.generate import write_scene
from tiling import OptionError

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "sample_data" / "demo_model.safetensors"  # a binary model of buildings: each one an object


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("objects") / "scene.tif"
    write_scene(path, None, 400, 460, seed=4, nodata_corner=True)
    return path


def _instances(out: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out), mode="r")["instances"][:])


def test_ids_do_not_depend_on_chunks_workers_or_resume(scene: Path, tmp_path: Path) -> None:
    options = {"output_kind": "labels,instances", "overlap": 32}
    reference = predict(scene, tmp_path / "ref.zarr", DEMO_MODEL, chunk=512, workers=1, **options)
    ids = _instances(tmp_path / "ref.zarr")
    count = sum(reference.objects.values())
    assert count > 20 and ids[ids != 2**32 - 1].max() == count
    for chunk, workers in ((128, 2), (256, 1), (144, 3)):
        report = predict(scene, tmp_path / f"c{chunk}.zarr", DEMO_MODEL, chunk=chunk, workers=workers, **options)
        assert report.objects == reference.objects
        np.testing.assert_array_equal(_instances(tmp_path / f"c{chunk}.zarr"), ids, err_msg=f"chunk {chunk}")

    # An interrupted run, resumed, numbers the objects the same way.
    checkpoint = load_checkpoint(DEMO_MODEL)
    calls = {"n": 0}

    def stop(_module, _inputs, _output):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt

    handle = checkpoint.model.register_forward_hook(stop)
    out = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        predict(scene, out, checkpoint, chunk=128, workers=1, batch_size=1, **options)
    handle.remove()
    done = zarr.open_group(str(out) + ".partial", mode="r")["done"][:]
    assert 0 < done.sum() < done.size
    report = predict(scene, out, checkpoint, chunk=128, workers=1, resume=True, **options)
    assert report.resumed and report.objects == reference.objects
    np.testing.assert_array_equal(_instances(out), ids)


def test_object_table_equals_the_raster(scene: Path, tmp_path: Path, capsys) -> None:
    out, table = tmp_path / "out.tif", tmp_path / "objects.csv"
    argv = ["predict", scene, out, "--model", DEMO_MODEL, "--output-kind", "instances", "--objects", table]
    assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    with rasterio.open(out) as ds:
        ids, transform = ds.read(1), ds.transform
        assert ds.dtypes[0] == "uint32" and ds.nodata == 2**32 - 1 and ds.crs is not None
    rows = list(csv.DictReader(table.open()))
    assert f"{len(rows)} object(s) ({len(rows)} building)" in err
    assert [int(r["id"]) for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        ys, xs = np.nonzero(ids == int(row["id"]))
        assert int(row["area_px"]) == ys.size and row["class"] == "building"
        assert (int(row["bbox_x0_px"]), int(row["bbox_y1_px"])) == (xs.min(), ys.max() + 1)
        assert float(row["centroid_x_px"]) == pytest.approx(xs.mean() + 0.5)
        x, y = transform * (xs.mean() + 0.5, ys.mean() + 0.5)
        assert (float(row["centroid_x"]), float(row["centroid_y"])) == pytest.approx((x, y))
        assert float(row["area_map"]) == pytest.approx(ys.size * abs(transform.a * transform.e))
        assert 0.5 <= float(row["mean_probability"]) <= 1.0
    # Ids in raster order of each object's first pixel.
    firsts = [int(np.flatnonzero(ids.ravel() == int(r["id"]))[0]) for r in rows]
    assert firsts == sorted(firsts)


def test_polygons_one_per_object(scene: Path, tmp_path: Path) -> None:
    import pyogrio.raw

    out, polygons = tmp_path / "out.zarr", tmp_path / "objects.gpkg"
    report = predict(scene, out, DEMO_MODEL, output_kind="labels,instances", vector=polygons)
    meta, _, _, fields = pyogrio.raw.read(polygons)
    ids = fields[meta["fields"].tolist().index("id")]
    assert report.polygons == sum(report.objects.values()) == len(ids)
    assert sorted(ids.tolist()) == list(range(1, len(ids) + 1))


def test_qupath_detections_on_level_0_of_a_resampled_slide(scene: Path, tmp_path: Path) -> None:
    with rasterio.open(scene) as ds:
        rgb = ds.read()
    slide = tmp_path / "slide.tif"  # 0.25 µm/px; read at 0.5 µm/px, half the pixels a side
    tifffile.imwrite(slide, np.moveaxis(rgb, 0, 2), photometric="rgb", resolution=(40000, 40000), resolutionunit=3)
    dest = tmp_path / "nuclei.geojson"
    report = predict(
        slide,
        tmp_path / "out.ome.tif",
        DEMO_MODEL,
        mpp=0.5,
        output_kind="instances",
        vector=dest,
        vector_style="qupath",
    )
    features = json.loads(dest.read_text())["features"]
    assert len(features) == report.polygons == sum(report.objects.values()) > 0
    first = features[0]["properties"]
    assert first["objectType"] == "detection"
    assert first["classification"]["name"] == "building" and len(first["classification"]["color"]) == 3
    assert {"area_um2", "mean_probability", "centroid_x_um"} <= set(first["measurements"])
    xs = [x for f in features for ring in f["geometry"]["coordinates"] for x, _ in ring]
    assert max(xs) > 460 * 0.75  # level-0 pixels: the 230-px grid that was read, doubled
    assert max(xs) <= 460


def test_object_options_are_checked_before_any_work(scene: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="add instances"):
        predict(scene, tmp_path / "o.tif", DEMO_MODEL, objects=str(tmp_path / "t.csv"))
    with pytest.raises(OptionError, match=r"\.csv or \.parquet|ending in \.csv"):
        predict(scene, tmp_path / "o.tif", DEMO_MODEL, output_kind="instances", objects=str(tmp_path / "t.txt"))
    with pytest.raises(OptionError, match="unknown --output-kind"):
        predict(scene, tmp_path / "o.tif", DEMO_MODEL, output_kind="label")
    assert not list(tmp_path.iterdir())
