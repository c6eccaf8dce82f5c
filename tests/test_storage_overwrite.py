"""--overwrite of a Zarr output on object storage: the old output stays whole until the new one is, as with local
files; a run that fails, computing or while its output is copied into place, never leaves a half-written store
that reads as an image, and --resume finishes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import predict
from tiling.errors import TilewiseError

from .conftest import make_checkpoint, random_image, write_geotiff
from .object_store import s3, s3_server, writes_fail_after  # noqa: F401 - fixtures
from .test_cli import assert_one_line_error, run_cli

OPTIONS = {"chunk": 64, "output_kind": "both", "workers": 1}


def _arrays(store: str | Path) -> dict[str, np.ndarray]:
    """Every array of a Zarr store (labels, probabilities, pyramid levels), by path."""
    group = zarr.open_group(str(store), mode="r")
    return {path: np.asarray(node[:]) for path, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def _assert_same(got: str | Path, want: str | Path | dict[str, np.ndarray]) -> None:
    """The same arrays; probabilities to float32 rounding (forward passes batched differently)."""
    expected = want if isinstance(want, dict) else _arrays(want)
    found = _arrays(got)
    assert sorted(found) == sorted(expected)
    for path, data in expected.items():
        if data.dtype.kind == "f":
            np.testing.assert_allclose(found[path], data, rtol=0, atol=1e-5, err_msg=path)
        else:
            np.testing.assert_array_equal(found[path], data, err_msg=path)


@pytest.fixture
def scene(s3, tmp_path: Path) -> tuple[Path, str]:  # noqa: F811
    local = write_geotiff(tmp_path / "scene.tif", random_image((3, 150, 170), seed=9))
    return local, s3.upload(local, f"s3://{s3.new_bucket()}/in/scene.tif")


@pytest.fixture
def models(tmp_path: Path, checkpoint: Path) -> tuple[Path, Path]:
    return checkpoint, make_checkpoint(tmp_path / "other.safetensors", seed=3)


@pytest.mark.parametrize("name", ["out.zarr", "out.ome.zarr"])
def test_overwrite_replaces_an_s3_zarr_output_with_the_new_one(
    s3,  # noqa: F811
    scene,
    models,
    tmp_path: Path,
    capsys,
    name: str,
) -> None:
    local_in, url_in = scene
    old, new = models
    bucket = s3.new_bucket()
    out = f"s3://{bucket}/{name}"
    assert run_cli(capsys, "predict", url_in, out, "--model", old, "--chunk", "64")[0] == 0
    code, err = run_cli(capsys, "predict", url_in, out, "--model", new, "--chunk", "64")
    assert_one_line_error(code, err, 1, f"output {out} already exists", "--overwrite")
    want_old = predict(local_in, tmp_path / f"old-{name}", old, chunk=64).outputs[0]
    _assert_same(out, want_old)  # refused: the output is as it was
    code, err = run_cli(capsys, "predict", url_in, out, "--model", new, "--chunk", "64", "--overwrite")
    assert code == 0, err
    want_new = predict(local_in, tmp_path / f"new-{name}", new, chunk=64).outputs[0]
    _assert_same(out, want_new)
    assert not [k for k in s3.keys(bucket) if ".partial" in k]


def test_a_failed_overwrite_keeps_the_old_output_whole(s3, scene, models, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """The new output is computed beside the old one (in its work store): a run that fails after some chunks
    leaves the old output as it was; --resume then replaces it."""
    local_in, url_in = scene
    old, new = models
    bucket = s3.new_bucket()
    out = f"s3://{bucket}/out.zarr"
    predict(url_in, out, old, **OPTIONS)
    before = _arrays(out)
    store_back = writes_fail_after(monkeypatch, 4)
    with pytest.raises(TilewiseError):
        predict(url_in, out, new, overwrite=True, **OPTIONS)
    for path, data in _arrays(out).items():  # untouched, bit for bit
        np.testing.assert_array_equal(data, before[path], err_msg=path)
    assert sorted(_arrays(out)) == sorted(before)
    assert s3.keys(bucket, "out.zarr.partial/labels/c/"), "the new chunks are not in the work store"
    store_back()
    report = predict(url_in, out, new, overwrite=True, resume=True, **OPTIONS)
    assert report.resumed and report.chunks_computed == 5
    _assert_same(out, predict(local_in, tmp_path / "new.zarr", new, **OPTIONS).outputs[0])
    assert not s3.keys(bucket, "out.zarr.partial/")


def test_a_copy_that_fails_leaves_no_image_and_resumes(s3, scene, models, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """Copying the finished store over the old output fails half-way: no root metadata at the URL (no reader
    takes the mixture for an image), the finished work store kept; --resume copies it again."""
    import s3fs

    local_in, url_in = scene
    old, new = models
    bucket = s3.new_bucket()
    out = f"s3://{bucket}/out.zarr"
    predict(url_in, out, old, **OPTIONS)
    real_copy, copied = s3fs.S3FileSystem._cp_file, []

    async def failing_copy(self, path1, path2, **kwargs):
        if len(copied) == 3:
            raise OSError(5, "the connection was reset")
        copied.append(path2)
        return await real_copy(self, path1, path2, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cp_file", failing_copy)
    with pytest.raises(TilewiseError) as failed:
        predict(url_in, out, new, overwrite=True, **OPTIONS)
    assert "9 of 9 chunks are done" in " ".join(getattr(failed.value, "tilewise_notes", []))
    assert copied and "out.zarr/zarr.json" not in s3.keys(bucket, "out.zarr/")
    with pytest.raises(Exception):  # noqa: B017 - zarr's error for a group without metadata
        zarr.open_group(out, mode="r")
    assert f"{bucket}/out.zarr/zarr.json" not in copied
    monkeypatch.setattr(s3fs.S3FileSystem, "_cp_file", real_copy)
    report = predict(url_in, out, new, overwrite=True, resume=True, **OPTIONS)
    assert report.resumed and report.chunks_computed == 0
    _assert_same(out, predict(local_in, tmp_path / "new.zarr", new, **OPTIONS).outputs[0])
    assert not s3.keys(bucket, "out.zarr.partial/")
