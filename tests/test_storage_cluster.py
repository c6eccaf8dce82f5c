"""A cluster run that needs no shared filesystem: input, checkpoint, output and work store in object storage
(a moto server on loopback), two worker processes; the output equals a local run on threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import predict
from tiling import open_raster
from tiling.plan import Span

from .conftest import random_image, write_geotiff
from .object_store import s3, s3_server  # noqa: F401 - fixtures

pytest.importorskip("distributed")


def _labels(path: str | Path) -> np.ndarray:
    reader = open_raster(path)
    try:
        return reader.read(Span(0, reader.info.height), Span(0, reader.info.width))[0]
    finally:
        reader.close()


@pytest.mark.parametrize("name", ["labels.tif", "labels.ome.zarr"])
def test_a_local_cluster_with_everything_in_s3(s3, tmp_path: Path, checkpoint: Path, name: str) -> None:  # noqa: F811
    """For a Zarr output the workers write their chunks straight to the output URL (written in place)."""
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 200, 230), seed=12))
    bucket = s3.new_bucket()
    url_in = s3.upload(scene, f"s3://{bucket}/in/scene.tif")
    model = s3.upload(checkpoint, f"s3://{bucket}/models/tiny.safetensors")
    options = {"chunk": 96, "output_kind": "labels"}
    reference = predict(scene, tmp_path / name, checkpoint, **options)
    out = f"s3://{bucket}/out/{name}"
    work = f"s3://{bucket}/work"
    report = predict(url_in, out, model, cluster="local:2", work_dir=work, **options)
    assert report.outputs == [out] and report.chunks_computed == reference.chunks_computed
    np.testing.assert_array_equal(_labels(out), _labels(tmp_path / name))
    assert s3.keys(bucket, "work/") == []  # the work store is gone once the output is uploaded
