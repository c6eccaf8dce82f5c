"""Reading from object storage: GeoTIFF through GDAL's ranged requests, slides through tifffile over an fsspec
file, Zarr through zarr's FsspecStore, each equal to reading the same file locally; failures as one line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tiling import open_raster
from tiling.errors import InputError, OptionError, TilewiseError
from tiling.plan import Span
from tiling.readers import GdalReader, TiffReader, ZarrReader
from tiling.storage import StoragePath, StorageSettings, is_remote

from .conftest import random_image, write_geotiff
from .object_store import s3, s3_server  # noqa: F401 - fixtures
from .test_slides import write_pyramid

WINDOW = (Span(10, 70), Span(33, 120))


def _same_reads(local: Path, url: str, **kw: object) -> type:
    expected = open_raster(local, **kw)  # type: ignore[arg-type]
    remote = open_raster(url, **kw)  # type: ignore[arg-type]
    try:
        assert remote.info.height == expected.info.height and remote.info.width == expected.info.width
        assert remote.info.pixel_size_um == expected.info.pixel_size_um
        assert remote.info.crs == expected.info.crs
        for got, want in zip(remote.read(*WINDOW), expected.read(*WINDOW), strict=True):
            np.testing.assert_array_equal(got, want)
        return type(remote)
    finally:
        remote.close()
        expected.close()


def test_names_for_each_library() -> None:
    s3_path = StoragePath("s3://bucket/scenes/a.tif")
    assert s3_path.gdal_path == "/vsis3/bucket/scenes/a.tif"
    assert StoragePath("/vsis3/bucket/scenes/a.tif").url == "s3://bucket/scenes/a.tif"
    assert StoragePath("https://host/a.tif").gdal_path == "/vsicurl/https://host/a.tif"
    assert StoragePath("/vsicurl/https://host/a.tif").url == "https://host/a.tif"
    assert StoragePath("gs://b/k.tif").gdal_path == "/vsigs/b/k.tif"
    assert s3_path.sibling("b.tif").url == "s3://bucket/scenes/b.tif"
    assert s3_path.name == "a.tif"
    assert is_remote("/vsiaz/c/k") and is_remote("https://h/x") and not is_remote("file:///tmp/x")
    assert not is_remote("/data/a.tif") and StoragePath("/data/a.tif").gdal_path == "/data/a.tif"


def test_endpoint_is_translated_into_gdal_settings() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    gdal = StorageSettings.from_environment(env).as_dict()
    assert gdal["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert gdal["AWS_HTTPS"] == "NO" and gdal["AWS_VIRTUAL_HOSTING"] == "FALSE"
    secure = StorageSettings.from_environment({"AWS_ENDPOINT_URL": "https://minio.example:443/"}).as_dict()
    assert secure["AWS_S3_ENDPOINT"] == "minio.example:443" and secure["AWS_HTTPS"] == "YES"
    # what the user told GDAL stays; no endpoint, no endpoint settings
    mine = StorageSettings.from_environment({**env, "AWS_HTTPS": "YES", "GDAL_HTTP_MAX_RETRY": "9"}).as_dict()
    assert "AWS_HTTPS" not in mine and "GDAL_HTTP_MAX_RETRY" not in mine
    assert "AWS_S3_ENDPOINT" not in StorageSettings.from_environment({}).as_dict()


def test_geotiff_from_s3_equals_local(s3, tmp_path: Path) -> None:  # noqa: F811
    local = write_geotiff(tmp_path / "scene.tif", random_image((3, 130, 150), seed=3), nodata=0)
    url = s3.upload(local, f"s3://{s3.new_bucket()}/scenes/scene.tif")
    assert _same_reads(local, url) is GdalReader
    assert _same_reads(local, StoragePath(url).gdal_path) is GdalReader


def test_a_remote_reader_pickles_and_reads_where_it_lands(s3, tmp_path: Path) -> None:  # noqa: F811
    import pickle

    local = write_geotiff(tmp_path / "scene.tif", random_image((1, 100, 100), seed=4))
    reader = open_raster(s3.upload(local, f"s3://{s3.new_bucket()}/scene.tif"))
    copy = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(copy.read(Span(0, 50), Span(0, 50))[0], reader.read(Span(0, 50), Span(0, 50))[0])
    copy.close()
    reader.close()


def test_slide_from_s3_by_mpp_equals_local(s3, tmp_path: Path) -> None:  # noqa: F811
    local = write_pyramid(tmp_path / "slide.ome.tif", random_image((3, 256, 192), seed=5))
    url = s3.upload(local, f"s3://{s3.new_bucket()}/slides/slide.ome.tif")
    assert _same_reads(local, url) is TiffReader
    _same_reads(local, url, mpp=0.5)  # level 1 of the pyramid
    _same_reads(local, url, mpp=0.7)  # resampled from level 1


def test_a_window_of_a_remote_slide_fetches_its_tiles_together(
    s3,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tiles under a window are fetched in one concurrent batch before tifffile decodes them one by one; a
    window whose tiles were fetched before fetches nothing."""
    import fsspec

    local = write_pyramid(tmp_path / "slide.ome.tif", random_image((3, 256, 192), seed=6))
    url = s3.upload(local, f"s3://{s3.new_bucket()}/slide.ome.tif")
    filesystem = fsspec.get_filesystem_class("s3")
    original, batches = filesystem._cat_ranges, []

    async def counting(self, paths, *args, **kwargs):  # type: ignore[no-untyped-def]
        batches.append(len(paths))
        return await original(self, paths, *args, **kwargs)

    monkeypatch.setattr(filesystem, "_cat_ranges", counting)
    remote, expected = open_raster(url), open_raster(local)
    try:
        rows, cols = Span(10, 140), Span(20, 150)  # 64-px tiles: rows 0-2 × columns 0-2 of 3 planes
        got = remote.read(rows, cols)
        assert len(batches) == 1 and 1 < batches[0] <= 27, batches  # those not fetched when the file was opened
        again = remote.read(Span(70, 120), Span(70, 120))  # inside the tiles fetched
        assert len(batches) == 1
        for a, b in zip(got, expected.read(rows, cols), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(again[0], expected.read(Span(70, 120), Span(70, 120))[0])
    finally:
        remote.close()
        expected.close()


def test_zarr_from_s3_equals_local(s3, tmp_path: Path) -> None:  # noqa: F811
    local = tmp_path / "image.zarr"
    image = random_image((2, 90, 110), seed=6)
    zarr.create_array(local, data=image, chunks=(2, 32, 32), attributes={"nodata": 0})
    bucket = s3.new_bucket()
    fs, _ = StoragePath(f"s3://{bucket}").filesystem()
    fs.put(str(local), f"{bucket}/image.zarr", recursive=True)
    assert _same_reads(local, f"s3://{bucket}/image.zarr") is ZarrReader


def test_missing_key_and_bucket_are_one_line(s3) -> None:  # noqa: F811
    bucket = s3.new_bucket()
    with pytest.raises(TilewiseError, match=rf"^s3://{bucket}/nothing.tif does not exist$"):
        open_raster(f"s3://{bucket}/nothing.tif")
    with pytest.raises(TilewiseError, match=r"no such bucket") as caught:
        open_raster("s3://no-such-bucket-here/a.tif")
    assert "\n" not in str(caught.value)


def test_no_credentials_is_one_line(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    local = write_geotiff(tmp_path / "scene.tif", random_image((1, 40, 40)))
    url = s3.upload(local, f"s3://{s3.new_bucket()}/scene.tif")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    from .object_store import _clear_filesystems

    _clear_filesystems()
    with pytest.raises(TilewiseError, match=r"^no credentials for s3://.*AWS_ACCESS_KEY_ID") as caught:
        open_raster(url)
    assert "\n" not in str(caught.value)


def test_missing_s3fs_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = sys.modules["fsspec.registry"]._registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs fails, as where it is not installed
    monkeypatch.delitem(registry, "s3", raising=False)
    with pytest.raises(OptionError, match=r"pip install 'tilewise\[s3\]'"):
        open_raster("s3://bucket/a.tif")


def test_an_empty_object_is_refused(s3, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "empty.tif").write_bytes(b"")
    url = s3.upload(tmp_path / "empty.tif", f"s3://{s3.new_bucket()}/empty.tif")
    with pytest.raises(InputError, match="empty file"):
        open_raster(url)


def test_predict_from_s3_equals_local(s3, tmp_path: Path, checkpoint: Path) -> None:  # noqa: F811
    import rasterio

    from pipeline import predict

    local = write_geotiff(tmp_path / "scene.tif", random_image((3, 130, 150), seed=7))
    url = s3.upload(local, f"s3://{s3.new_bucket()}/scene.tif")
    predict(local, tmp_path / "local.tif", checkpoint, chunk=64)
    predict(url, tmp_path / "remote.tif", checkpoint, chunk=64)
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "remote.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_the_tile_cache_serves_reads_inside_kept_ranges_and_drops_the_oldest() -> None:
    from tiling.storage.read_cache import TileCache

    cache = TileCache(budget=100)
    cache.put("a", 10, bytes(range(40)))  # bytes 10..50 of file a
    assert cache.get("a", 20, 30) == bytes(range(10, 20))
    assert cache.get("a", 5, 30) is None and cache.get("a", 40, 60) is None and cache.get("b", 20, 30) is None
    cache.put("b", 0, bytes(50))
    cache.put("a", 100, bytes(30))  # 120 bytes held: the least recently used range (a@10) goes
    assert cache.get("a", 20, 30) is None and cache.held == 80
    assert cache.get("b", 0, 50) == bytes(50) and cache.get("a", 100, 130) == bytes(30)


def test_nearly_touching_ranges_are_fetched_as_one() -> None:
    from tiling.storage.read_cache import merged

    assert merged([(50, 60), (0, 10), (12, 20), (30, 40)], gap=2) == [(0, 20), (30, 40), (50, 60)]
    assert merged([(0, 10), (5, 8), (10, 30)], gap=0) == [(0, 30)]
    assert merged([], gap=5) == []


def test_the_plan_counts_what_is_kept_of_a_remote_input(s3, tmp_path: Path, checkpoint: Path) -> None:  # noqa: F811
    """A remote slide's tile cache (no more than the file), GDAL's cache of fetched ranges and the decoded blocks
    kept (no more than the raster) for a remote tiled GeoTIFF, nothing for a local file: a term of the memory
    plan, and of ``tilewise info``."""
    from pipeline.info import describe
    from pipeline.options import PredictOptions
    from pipeline.run_plan import plan_run
    from tiling.readers import GDAL_CURL_CACHE_BYTES

    bucket = s3.new_bucket()
    slide = write_pyramid(tmp_path / "slide.ome.tif", random_image((3, 256, 192), seed=5))
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 80, 90), seed=1))
    cases = [
        (s3.upload(slide, f"s3://{bucket}/slide.ome.tif"), slide.stat().st_size),
        (s3.upload(scene, f"s3://{bucket}/scene.tif"), GDAL_CURL_CACHE_BYTES + 80 * 90 * (3 + 1)),
        (str(slide), 0),
        (str(scene), 0),
    ]
    for source, kept in cases:
        with plan_run(source, checkpoint, PredictOptions(chunk=64)) as plan:
            assert plan.resources.estimate.read_cache == kept, source
        text = describe(source, str(checkpoint), PredictOptions(chunk=64))
        assert ("read cache" in text) == bool(kept), text
