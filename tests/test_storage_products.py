"""URLs beyond the raster itself: an http(s) input served from loopback, the object table written to S3, and
``tilewise info`` planning a run with an S3 output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline import predict
from pipeline.cli import main
from sample_data.generate import write_scene
from tiling.storage import StoragePath

from .conftest import random_image, write_geotiff
from .object_store import _free_port, s3, s3_server, wait_for_server  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "sample_data" / "demo_model.safetensors"  # a binary model of buildings: each one an object


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served by ``python -m http.server`` on loopback, and its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_server(port, process, "the HTTP server")
    try:
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_predict_from_an_http_url_equals_a_local_run(http_folder, tmp_path: Path, checkpoint: Path) -> None:
    folder, base = http_folder
    local = write_geotiff(folder / "scene.tif", random_image((3, 130, 150), seed=7))
    predict(local, tmp_path / "local.tif", checkpoint, chunk=64)
    report = predict(f"{base}/scene.tif", tmp_path / "remote.tif", checkpoint, chunk=64)
    assert report.chunks_computed == 9
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "remote.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.crs == b.crs and a.transform == b.transform


def test_the_object_table_is_written_to_a_url(s3, tmp_path: Path) -> None:  # noqa: F811
    """With the instance map written in place to an S3 Zarr store (its work tables beside it until the end)."""
    import zarr

    scene = tmp_path / "scene.tif"
    write_scene(scene, None, 200, 230, seed=4, nodata_corner=True)
    options = {"output_kind": "instances", "chunk": 128}
    local = predict(scene, tmp_path / "out.zarr", DEMO_MODEL, objects=str(tmp_path / "t.csv"), **options)
    bucket = s3.new_bucket()
    out, table = f"s3://{bucket}/out.zarr", f"s3://{bucket}/tables/t.csv"
    remote = predict(scene, out, DEMO_MODEL, objects=table, **options)
    assert sum(local.objects.values()) > 0 and remote.objects == local.objects
    assert [str(p) for p in remote.outputs] == [out, table]
    fs, _ = StoragePath(f"s3://{bucket}").filesystem()
    assert fs.cat_file(f"{bucket}/tables/t.csv") == (tmp_path / "t.csv").read_bytes()
    want = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["instances"][:]
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["instances"][:], want)
    assert not [k for k in s3.keys(bucket) if ".partial" in k or "_work" in k]


@pytest.mark.parametrize("name", ["out.tif", "out.ome.zarr"])
def test_info_plans_a_run_with_an_s3_output(s3, tmp_path: Path, checkpoint: Path, capsys, name: str) -> None:  # noqa: F811
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 130, 150), seed=7))
    bucket = s3.new_bucket()
    url_in = s3.upload(scene, f"s3://{bucket}/in/scene.tif")
    out = f"s3://{bucket}/out/{name}"
    assert main(["info", url_in, out, "--model", str(checkpoint), "--chunk", "64"]) == 0
    printed = capsys.readouterr().out
    assert f"output      {out} (" in printed and "150 x 130 pixels" in printed
    assert "tiles" in printed and "memory" in printed
    assert s3.keys(bucket) == ["in/scene.tif"]  # planning writes nothing
