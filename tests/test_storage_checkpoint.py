"""Checkpoints by URL: downloaded once per process into a cache keyed by the weights checksum, never
unpickled; a predict with one equals a predict with the local file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline import checkpoint_download, load_checkpoint, predict, read_card
from tiling.errors import CheckpointError, TilewiseError

from .conftest import make_checkpoint, random_image, write_geotiff
from .object_store import s3, s3_server  # noqa: F401 - fixtures


def test_a_checkpoint_url_is_downloaded_once_and_cached_by_its_checksum(
    s3,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = make_checkpoint(tmp_path / "tiny.safetensors")
    url = s3.upload(local, f"s3://{s3.new_bucket()}/models/tiny.safetensors")
    downloads: list[str] = []
    original = checkpoint_download._download
    monkeypatch.setattr(
        checkpoint_download, "_download", lambda loc, path: (downloads.append(loc.text), original(loc, path))
    )
    card = read_card(url)
    loaded = load_checkpoint(url)
    assert card == read_card(local) and downloads == [url]
    digest = checkpoint_download.remote_digest(checkpoint_download.StoragePath(url))
    assert (checkpoint_download.cache_folder() / f"{digest}.safetensors").exists()
    for name, tensor in load_checkpoint(local).model.state_dict().items():
        assert np.array_equal(tensor.numpy(), loaded.model.state_dict()[name].numpy())
    # a new checkpoint at the same URL is a new download
    s3.upload(make_checkpoint(tmp_path / "other.safetensors", seed=1), url)
    load_checkpoint(url)
    assert downloads == [url, url]


def test_predict_with_a_checkpoint_url_equals_the_local_file(s3, tmp_path: Path, checkpoint: Path) -> None:  # noqa: F811
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 100, 120), seed=2))
    url = s3.upload(checkpoint, f"s3://{s3.new_bucket()}/tiny.safetensors")
    predict(scene, tmp_path / "local.tif", checkpoint, chunk=64)
    predict(scene, tmp_path / "remote.tif", url, chunk=64)
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "remote.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_pickle_at_a_checkpoint_url_is_refused_unread(s3, tmp_path: Path) -> None:  # noqa: F811
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle's opening bytes
    url = s3.upload(pickled, f"s3://{s3.new_bucket()}/model.pt")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_card(url)
    assert not checkpoint_download.cache_folder().exists()


def test_a_missing_checkpoint_url_is_one_line(s3) -> None:  # noqa: F811
    with pytest.raises(TilewiseError, match=r"^checkpoint s3://.*/none.safetensors does not exist$"):
        read_card(f"s3://{s3.new_bucket()}/none.safetensors")
