"""Writing to object storage: an s3:// output assembled in local scratch and uploaded (COG, OME-TIFF) or
written in place with its root metadata last (Zarr, OME-Zarr), equal to the same run on local files; the work store next
to an s3:// output, and --resume against it; "already exists" and --overwrite as for local files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import predict
from tiling import open_raster
from tiling.errors import OutputError, TilewiseError
from tiling.plan import Span
from tiling.storage import StoragePath

from .conftest import make_checkpoint, random_image, write_geotiff
from .object_store import s3, s3_server, writes_fail_after  # noqa: F401 - fixtures

OPTIONS = {"chunk": 64, "output_kind": "both"}


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Labels and ids equal; probabilities to the chunk-invariance tolerance (two runs in one process may pick
    different float kernels for their batches, a difference in the last bit)."""
    assert got.dtype == want.dtype, what
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def _read_all(path: str | Path) -> np.ndarray:
    reader = open_raster(path)
    try:
        return reader.read(Span(0, reader.info.height), Span(0, reader.info.width))[0]
    finally:
        reader.close()


@pytest.fixture
def scene(s3, tmp_path: Path) -> tuple[Path, str]:  # noqa: F811
    local = write_geotiff(tmp_path / "scene.tif", random_image((3, 150, 170), seed=9))
    return local, s3.upload(local, f"s3://{s3.new_bucket()}/in/scene.tif")


@pytest.mark.parametrize("name", ["out.tif", "out.ome.tif", "out.zarr", "out.ome.zarr"])
def test_s3_to_s3_equals_a_local_run(s3, scene, tmp_path: Path, checkpoint: Path, name: str) -> None:  # noqa: F811
    local_in, url_in = scene
    bucket = s3.new_bucket()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    local = predict(local_in, tmp_path / name, checkpoint, **OPTIONS)
    remote = predict(url_in, f"s3://{bucket}/out/{name}", checkpoint, scratch_dir=str(scratch), **OPTIONS)
    assert [str(p) for p in remote.outputs] == [
        str(p).replace(str(tmp_path), f"s3://{bucket}/out") for p in local.outputs
    ]
    for want, got in zip(local.outputs, remote.outputs, strict=True):
        target = str(got)
        if target.endswith(".zarr"):
            group = zarr.open_group(target, mode="r")
            for array in ("labels", "probs") if name == "out.zarr" else ("0",):
                if array in zarr.open_group(want, mode="r"):
                    _assert_same(group[array][:], zarr.open_group(want, mode="r")[array][:], f"{target} {array}")
        _assert_same(_read_all(target), _read_all(want), target)
    # nothing left behind: no work store in the bucket, an empty scratch folder
    assert not [k for k in s3.keys(bucket) if ".partial" in k]
    assert list(scratch.iterdir()) == []


def test_an_existing_output_is_refused_unless_overwrite(s3, scene, tmp_path: Path, checkpoint: Path) -> None:  # noqa: F811
    _, url_in = scene
    out = f"s3://{s3.new_bucket()}/out.tif"
    predict(url_in, out, checkpoint, chunk=64)
    with pytest.raises(OutputError, match=rf"^output {out} already exists \(pass overwrite=True"):
        predict(url_in, out, checkpoint, chunk=64)
    before = StoragePath(out).version()["etag"]
    other = make_checkpoint(tmp_path / "other.safetensors", seed=3)
    predict(url_in, out, other, chunk=64, overwrite=True)
    assert StoragePath(out).version()["etag"] != before


def test_a_missing_output_bucket_is_one_line(s3, scene, checkpoint: Path) -> None:  # noqa: F811
    _, url_in = scene
    with pytest.raises(OutputError, match=r"^output bucket s3://no-such-bucket-x does not exist$"):
        predict(url_in, "s3://no-such-bucket-x/out.tif", checkpoint, chunk=64)


def test_resume_against_an_s3_work_store(s3, scene, tmp_path: Path, checkpoint: Path, monkeypatch) -> None:  # noqa: F811
    """A run that fails after some chunks keeps them in the work store next to the s3:// output; --resume
    computes only the rest and gives the output of an uninterrupted run."""
    _, url_in = scene
    bucket = s3.new_bucket()
    out = f"s3://{bucket}/out.tif"
    reference = tmp_path / "reference.tif"
    predict(url_in, reference, checkpoint, chunk=64, workers=1)
    store_back = writes_fail_after(monkeypatch, 4)
    with pytest.raises(TilewiseError) as failed:
        predict(url_in, out, checkpoint, chunk=64, workers=1)
    assert "4 of 9 chunks are done" in " ".join(getattr(failed.value, "tilewise_notes", []))
    assert s3.keys(bucket, "out.tif.partial/") and not StoragePath(out).exists()
    store_back()
    report = predict(url_in, out, checkpoint, chunk=64, workers=1, resume=True)
    assert report.resumed and report.chunks_computed == 5
    _assert_same(_read_all(out), _read_all(reference), out)
    assert s3.keys(bucket) == ["out.tif"]


def test_the_scratch_space_is_checked_against_the_plan(s3, scene, tmp_path: Path, checkpoint, monkeypatch) -> None:  # noqa: F811
    import shutil

    from tiling.writers import disk

    _, url_in = scene
    real = shutil.disk_usage
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: real(p)._replace(free=0))
    with pytest.raises(OutputError, match=rf"not enough free disk space.* in {re.escape(str(tmp_path))}: "):
        predict(url_in, f"s3://{s3.new_bucket()}/out.tif", checkpoint, chunk=64, scratch_dir=str(tmp_path))


def test_preview_and_polygons_at_urls(s3, scene, tmp_path: Path, checkpoint: Path) -> None:  # noqa: F811
    local_in, url_in = scene
    bucket = s3.new_bucket()
    products = {"preview": str(tmp_path / "p.png"), "vector": str(tmp_path / "p.geojson")}
    predict(local_in, tmp_path / "out.tif", checkpoint, chunk=64, **products)
    report = predict(
        url_in,
        f"s3://{bucket}/out.tif",
        checkpoint,
        chunk=64,
        preview=f"s3://{bucket}/p.png",
        vector=f"s3://{bucket}/p.geojson",
    )
    assert report.outputs == [f"s3://{bucket}/out.tif", f"s3://{bucket}/p.png", f"s3://{bucket}/p.geojson"]
    fs, _ = StoragePath(f"s3://{bucket}").filesystem()
    assert fs.cat_file(f"{bucket}/p.png") == (tmp_path / "p.png").read_bytes()
    assert fs.cat_file(f"{bucket}/p.geojson") == (tmp_path / "p.geojson").read_bytes()
    with pytest.raises(OutputError, match=rf"output s3://{bucket}/p.png already exists"):
        predict(url_in, f"s3://{bucket}/other.tif", checkpoint, chunk=64, preview=f"s3://{bucket}/p.png")


def test_killed_with_sigkill_then_resumed_from_the_s3_work_store(s3, tmp_path: Path) -> None:  # noqa: F811
    """A CLI run writing to S3, killed once some chunks are flagged done in its S3 work store, resumes from there:
    only the unfinished chunks run and the output equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import make_checkpoint

    scene = write_geotiff(tmp_path / "big.tif", random_image((3, 512, 512), seed=5))
    bucket = s3.new_bucket()
    url_in = s3.upload(scene, f"s3://{bucket}/big.tif")
    model = make_checkpoint(tmp_path / "m.safetensors", tile=64, depth=3, base_width=8)
    args = ["--model", str(model), "--chunk", "128", "--workers", "1", "--batch-size", "2", "--output-kind", "probs"]
    cli = [sys.executable, "-m", "pipeline.cli", "predict", url_in]
    reference = tmp_path / "ref.zarr"
    subprocess.run([*cli, str(reference), *args], check=True, capture_output=True)
    out = f"s3://{bucket}/out.zarr"
    process = subprocess.Popen([*cli, out, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if len(s3.keys(bucket, "out.zarr.partial/done/c/")) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert "out.zarr/zarr.json" not in s3.keys(bucket, "out.zarr/")  # written in place, but not whole
    done = len(s3.keys(bucket, "out.zarr.partial/done/c/"))
    resumed = subprocess.run([*cli, out, *args, "--resume"], capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"resumed: (\d+) chunk\(s\) computed, (\d+) kept from the earlier run", resumed.stderr)
    assert match and int(match.group(2)) == done and int(match.group(1)) == 16 - done, resumed.stderr
    expected = zarr.open_group(str(reference), mode="r")["probs"][:]
    np.testing.assert_allclose(zarr.open_group(out, mode="r")["probs"][:], expected, atol=1e-5, rtol=0)
    assert not s3.keys(bucket, "out.zarr.partial/")


@pytest.mark.parametrize("name", ["out.zarr", "out.ome.zarr"])
def test_a_zarr_output_is_written_in_place_root_metadata_last(
    s3,  # noqa: F811
    scene,
    tmp_path: Path,
    checkpoint: Path,
    monkeypatch,
    name: str,
) -> None:
    """The chunks go straight to the output URL (never through scratch); a run that fails while assembling
    leaves them there without the root metadata, so no reader takes them for an image; --resume finishes it."""
    from tiling.errors import write_failure
    from tiling.writers import location, zarr_store
    from tiling.writers.verify import verify_zarr

    local_in, url_in = scene
    bucket = s3.new_bucket()
    out = f"s3://{bucket}/{name}"
    want_preview = tmp_path / "want.png"
    local = predict(local_in, tmp_path / name, checkpoint, preview=str(want_preview), **OPTIONS).outputs[0]

    def no_download(self, local):
        raise AssertionError("an in-place output is never downloaded")

    def failing_check(path, group, arrays):
        raise write_failure(str(path), OSError(5, "the store went away"))

    monkeypatch.setattr(location.StoreLocation, "download", no_download)
    monkeypatch.setattr(zarr_store, "verify_zarr", failing_check)
    with pytest.raises(TilewiseError):
        predict(url_in, out, checkpoint, scratch_dir=str(tmp_path), **OPTIONS)
    written = s3.keys(bucket, f"{name}/")
    assert [k for k in written if "/c/" in k], "no chunk at the output URL"
    assert f"{name}/zarr.json" not in written
    assert f"{name}.partial/zarr.json" in s3.keys(bucket, f"{name}.partial/")
    with pytest.raises(Exception):  # noqa: B017 - zarr's error for a group without metadata
        zarr.open_group(out, mode="r")
    monkeypatch.setattr(zarr_store, "verify_zarr", verify_zarr)
    preview = tmp_path / "got.png"  # made from the label map at the output URL
    report = predict(url_in, out, checkpoint, resume=True, preview=str(preview), **OPTIONS)
    assert report.resumed and report.chunks_computed == 0
    assert preview.read_bytes() == want_preview.read_bytes()
    assert f"{name}/zarr.json" in s3.keys(bucket, f"{name}/")
    assert not s3.keys(bucket, f"{name}.partial/")
    _assert_same(_read_all(out), _read_all(local), out)
    want, got = zarr.open_group(str(local), mode="r"), zarr.open_group(out, mode="r")
    run_record = "tilewise_run_sha256"  # the run's input differs (a URL, a path)
    assert {k: v for k, v in got.attrs.items() if k != run_record} == {
        k: v for k, v in want.attrs.items() if k != run_record
    }
    assert sorted(got.keys()) == sorted(want.keys())


def test_a_zarr_output_with_a_local_work_store_is_uploaded_root_metadata_last(
    s3,  # noqa: F811
    scene,
    tmp_path: Path,
    checkpoint: Path,
) -> None:
    """A work store on another filesystem than the output's (--work-dir local) cannot share its group: the
    finished store is copied to scratch and uploaded instead, with the same result."""
    local_in, url_in = scene
    bucket = s3.new_bucket()
    work = tmp_path / "work"
    work.mkdir()
    local = predict(local_in, tmp_path / "out.zarr", checkpoint, **OPTIONS).outputs[0]
    out = f"s3://{bucket}/out.zarr"
    predict(url_in, out, checkpoint, work_dir=str(work), scratch_dir=str(tmp_path), **OPTIONS)
    for array in ("labels", "probs"):
        _assert_same(zarr.open_group(out, mode="r")[array][:], zarr.open_group(local, mode="r")[array][:], array)
    assert "out.zarr/zarr.json" in s3.keys(bucket) and list(work.iterdir()) == []
