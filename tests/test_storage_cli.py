"""Object-storage failures on the command line: one line on stderr, a non-zero exit, nothing at OUTPUT."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import random_image, write_geotiff
from .object_store import _clear_filesystems, s3, s3_server  # noqa: F401 - fixtures
from .test_cli import assert_one_line_error, run_cli


@pytest.fixture
def scene_url(s3, tmp_path: Path) -> str:  # noqa: F811
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 80, 90), seed=1))
    return s3.upload(scene, f"s3://{s3.new_bucket()}/scene.tif")


def test_missing_bucket_and_key(s3, scene_url: str, capsys, tmp_path: Path, checkpoint: Path) -> None:  # noqa: F811
    out = f"s3://{s3.new_bucket()}/out.tif"
    code, err = run_cli(capsys, "predict", "s3://no-such-bucket-y/a.tif", out, "--model", checkpoint)
    assert_one_line_error(code, err, 1, "s3://no-such-bucket-y/a.tif", "no such bucket")
    bucket = scene_url.split("/")[2]
    code, err = run_cli(capsys, "predict", f"s3://{bucket}/missing.tif", out, "--model", checkpoint)
    assert_one_line_error(code, err, 1, f"s3://{bucket}/missing.tif does not exist")
    code, err = run_cli(capsys, "predict", scene_url, "s3://no-such-bucket-z/out.tif", "--model", checkpoint)
    assert_one_line_error(code, err, 1, "output bucket s3://no-such-bucket-z does not exist")
    assert s3.keys(out.split("/")[2]) == []


def test_an_existing_output_needs_overwrite(s3, scene_url: str, capsys, checkpoint: Path) -> None:  # noqa: F811
    bucket = s3.new_bucket()
    out = f"s3://{bucket}/out.tif"
    assert run_cli(capsys, "predict", scene_url, out, "--model", checkpoint, "--chunk", "64")[0] == 0
    code, err = run_cli(capsys, "predict", scene_url, out, "--model", checkpoint)
    assert_one_line_error(code, err, 1, f"output {out} already exists", "--overwrite")
    assert run_cli(capsys, "predict", scene_url, out, "--model", checkpoint, "--overwrite")[0] == 0
    assert s3.keys(bucket) == ["out.tif"]


def test_no_credentials(s3, scene_url: str, capsys, checkpoint: Path, monkeypatch, tmp_path: Path) -> None:  # noqa: F811
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _clear_filesystems()
    code, err = run_cli(capsys, "predict", scene_url, tmp_path / "out.tif", "--model", checkpoint)
    assert_one_line_error(code, err, 1, "no credentials for", "AWS_ACCESS_KEY_ID")
    assert not (tmp_path / "out.tif").exists()


def test_an_endpoint_that_does_not_answer(s3, scene_url: str, capsys, checkpoint, monkeypatch, tmp_path) -> None:  # noqa: F811
    with __import__("socket").socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    _clear_filesystems()
    code, err = run_cli(capsys, "predict", scene_url, tmp_path / "out.tif", "--model", checkpoint)
    assert_one_line_error(code, err, 1, "cannot reach the storage endpoint", scene_url)


def test_missing_s3fs_names_the_extra(capsys, checkpoint: Path, monkeypatch, tmp_path: Path) -> None:
    registry = sys.modules["fsspec.registry"]._registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs fails, as where it is not installed
    monkeypatch.delitem(registry, "s3", raising=False)
    code, err = run_cli(capsys, "predict", "s3://bucket/a.tif", tmp_path / "out.tif", "--model", checkpoint)
    assert_one_line_error(code, err, 2, "pip install 'tilewise[s3]'")
