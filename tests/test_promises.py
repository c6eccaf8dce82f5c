"""Promises the README makes that no other test checks: a chunk is flagged done only after its data, a resume
keeps the chunk size without being told, a failure in the second file's assembly leaves nothing at either
path, ``predict_array`` equals ``predict``, and checkpoints of another version or with a damaged card are
refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline import load_checkpoint, predict, predict_array
from pipeline.cli import main
from tiling import CheckpointError, Span, WriteFailure
from tiling.readers.base import RasterInfo
from tiling.writers import OutputContent, StoreLocation, WorkStore, output_layers
from tiling.writers.encode import OutputSpec

from .conftest import make_checkpoint, random_image, write_geotiff

OPTIONS = {"tile": 64, "overlap": 16, "output_kind": "probs"}


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_geotiff(tmp_path / "scene.tif", random_image((3, 200, 230), seed=12))


def test_a_chunk_is_flagged_done_only_after_its_data(tmp_path: Path, monkeypatch) -> None:
    names = ("background", "foreground")
    info = RasterInfo("mem", "test", 64, 64, 3, "uint8")
    content = OutputContent(info, output_layers(OutputSpec("both"), names, 1), names)
    store = WorkStore.create(StoreLocation(str(tmp_path / "s.zarr")), content, (32, 32), (2, 2), {}, {}, {})
    written = []
    original = WorkStore.put

    def put_then_fail_on_probs(self, layer, rows, cols, data):
        if layer == "probs":
            raise OSError(28, "No space left on device")
        written.append(layer)
        original(self, layer, rows, cols, data)

    monkeypatch.setattr(WorkStore, "put", put_then_fail_on_probs)
    with pytest.raises(WriteFailure, match="no space left"):
        store.write((0, 1), Span(0, 32), Span(32, 64), np.full((1, 32, 32), 0.7, np.float32))
    assert written == ["labels"]  # the first layer was written, the second failed ...
    assert store.done_chunks((2, 2)) == set()  # ... and the chunk is not done


def test_resume_keeps_the_chunk_size_without_being_told(scene: Path, tmp_path: Path, capsys) -> None:
    checkpoint = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", tile=64))
    reference = predict(scene, tmp_path / "ref.zarr", checkpoint, chunk=64, **OPTIONS)
    calls = {"n": 0}

    def stop(_module, _inputs, _output):
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt

    handle = checkpoint.model.register_forward_hook(stop)
    out = tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        predict(scene, out, checkpoint, chunk=64, workers=1, batch_size=1, **OPTIONS)
    handle.remove()
    resumed = predict(scene, out, checkpoint, resume=True, **OPTIONS)  # no chunk: the store's
    assert resumed.chunk == 64 == reference.chunk and resumed.resumed
    probs = zarr.open_group(str(out), mode="r")["probs"][:]
    np.testing.assert_allclose(probs, zarr.open_group(str(tmp_path / "ref.zarr"))["probs"][:], atol=1e-5, rtol=0)


def test_a_failure_assembling_the_second_file_leaves_neither(scene: Path, tmp_path: Path, capsys) -> None:
    model = make_checkpoint(tmp_path / "m.safetensors", tile=64)
    out = tmp_path / "out.tif"
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    (tmp_path / "out_probs.tif.assembling.level0").symlink_to("/dev/full")  # the probabilities' file cannot be written
    code = main(["predict", str(scene), str(out), "--model", str(model), "--output-kind", "both"])
    err = capsys.readouterr().err
    assert code == 1 and "no space left" in err and "out_probs.tif" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "out.tif.partial", "scene.tif"]


def test_predict_array_equals_predict(scene: Path, tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "m.safetensors", tile=64, classes=3)
    predict(scene, tmp_path / "out.zarr", model, chunk=96, **OPTIONS)
    lazy = predict_array(scene, model, chunk=96, tile=64, overlap=16)
    assert lazy.shape == (3, 200, 230) and lazy.chunksize == (3, 96, 96)
    written = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["probs"][:]
    np.testing.assert_allclose(lazy.compute(), written, atol=1e-6, rtol=0)


def _rewrite_header(path: Path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    save_file(load_file(str(path)), str(path), metadata={**metadata, **changes})


def test_checkpoints_of_another_version_or_with_a_damaged_card_are_refused(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.safetensors")
    _rewrite_header(path, format_version="2")
    with pytest.raises(CheckpointError, match="format version 2; this tilewise reads version 1"):
        load_checkpoint(path)
    path = make_checkpoint(tmp_path / "n.safetensors")
    with safe_open(str(path), framework="pt") as f:
        card = json.loads(f.metadata()["card"])
    card["model"]["depth"] = "four"
    _rewrite_header(path, card=json.dumps(card))
    with pytest.raises(CheckpointError, match="damaged model card"):
        load_checkpoint(path)
    _rewrite_header(path, card="{not json")
    with pytest.raises(CheckpointError, match="damaged model card"):
        load_checkpoint(path)
