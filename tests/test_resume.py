"""Resume: an interrupted run keeps its finished chunks; ``--resume`` runs only the rest and gives the same output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import load_checkpoint, predict
from tiling import OptionError
from tiling.grid import TileGrid

from .conftest import make_checkpoint, random_image, write_geotiff

OPTIONS = {"tile": 64, "overlap": 16, "chunk": 64, "output_kind": "probs"}


def _probs(path: Path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["probs"][:]


def _done_flags(output: Path) -> np.ndarray:
    return zarr.open_group(str(output.with_name(output.name + ".partial")), mode="r")["done"][:]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_geotiff(tmp_path / "scene.tif", random_image((3, 300, 340), seed=21))


def _interrupt(scene: Path, out: Path, checkpoint, after_batches: int, **options) -> None:
    """Run until the model has seen ``after_batches`` batches, then interrupt as Ctrl-C would."""
    calls = {"n": 0}

    def stop(_module, _inputs, _output):
        calls["n"] += 1
        if calls["n"] > after_batches:
            raise KeyboardInterrupt

    handle = checkpoint.model.register_forward_hook(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            predict(scene, out, checkpoint, batch_size=1, workers=1, **{**OPTIONS, **options})
    finally:
        handle.remove()


def test_interrupted_run_resumes_to_the_same_output(scene: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", tile=64))
    reference = _probs(predict(scene, tmp_path / "ref.zarr", checkpoint, **OPTIONS).outputs[0])

    out = tmp_path / "out.zarr"
    _interrupt(scene, out, checkpoint, after_batches=20)
    assert not out.exists()
    flags = _done_flags(out)
    done_before = int(flags.sum())
    assert 0 < done_before < flags.size

    report = predict(scene, out, checkpoint, resume=True, **OPTIONS)
    assert report.resumed
    assert report.chunks_computed == flags.size - done_before
    # The tiles run again are exactly those that cover a chunk not yet done (a done chunk's other tiles are not).
    assert report.tiles_run == _tiles_covering(flags == 0, height=300, width=340)
    np.testing.assert_allclose(_probs(out), reference, atol=1e-5, rtol=0)
    assert not out.with_name("out.zarr.partial").exists()


def _tiles_covering(todo: np.ndarray, height: int, width: int) -> int:
    """Tiles of the OPTIONS grid whose footprint overlaps a chunk flagged in ``todo``."""
    grid, chunk = TileGrid(height, width, OPTIONS["tile"], OPTIONS["overlap"]), OPTIONS["chunk"]
    needed = np.zeros((height, width), bool)
    for i, j in np.argwhere(todo):
        needed[i * chunk : (i + 1) * chunk, j * chunk : (j + 1) * chunk] = True
    size = OPTIONS["tile"]
    return sum(bool(needed[t.y : t.y + size, t.x : t.x + size].any()) for t in grid.tiles())


def test_resume_refuses_changed_settings_and_input(scene: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", tile=64))
    out = tmp_path / "out.zarr"
    _interrupt(scene, out, checkpoint, after_batches=10)
    with pytest.raises(OptionError, match=r"cannot resume.*overlap"):
        predict(scene, out, checkpoint, resume=True, **{**OPTIONS, "overlap": 8})
    with pytest.raises(OptionError, match=r"cannot resume.*backend"):  # another engine computes other sums
        predict(scene, out, checkpoint, resume=True, **OPTIONS, backend="auto")
    write_geotiff(scene, random_image((3, 300, 340), seed=22))  # the input changes
    with pytest.raises(OptionError, match=r"cannot resume.*input"):
        predict(scene, out, checkpoint, resume=True, **OPTIONS)
    # Without --resume the stale work store is simply replaced.
    report = predict(scene, out, checkpoint, **OPTIONS)
    assert not report.resumed and report.chunks_computed == report.chunks


def test_resume_refuses_another_smallest_object(scene: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", tile=64))
    out = tmp_path / "objects.zarr"
    _interrupt(scene, out, checkpoint, after_batches=10, output_kind="instances")
    with pytest.raises(OptionError, match=r"cannot resume.*instances"):  # the objects would be numbered otherwise
        predict(scene, out, checkpoint, resume=True, **{**OPTIONS, "output_kind": "instances"}, min_object_area=9)
    report = predict(scene, out, checkpoint, resume=True, **{**OPTIONS, "output_kind": "instances"})
    assert report.resumed and report.objects is not None


def test_cli_killed_with_sigkill_then_resumed(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "big.tif", random_image((3, 512, 512), seed=5))
    model = make_checkpoint(tmp_path / "m.safetensors", tile=64, depth=3, base_width=8)
    cli = [sys.executable, "-m", "pipeline.cli", "predict", str(scene)]
    args = ["--model", str(model), "--chunk", "128", "--workers", "1", "--batch-size", "2", "--output-kind", "probs"]
    reference = tmp_path / "ref.zarr"
    subprocess.run([*cli, str(reference), *args], check=True, capture_output=True)

    out = tmp_path / "out.zarr"
    process = subprocess.Popen([*cli, str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = out.with_name("out.zarr.partial")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if store.exists() and (store / "done" / "zarr.json").exists() and _done_flags(out).sum() >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    flags = _done_flags(out)
    unfinished = int(flags.size - flags.sum())
    assert unfinished > 0

    resumed = subprocess.run([*cli, str(out), *args, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"resumed: (\d+) chunk\(s\) computed, (\d+) kept from the earlier run", resumed.stderr)
    assert match, resumed.stderr
    assert int(match.group(1)) == unfinished and int(match.group(2)) == flags.size - unfinished
    np.testing.assert_allclose(_probs(out), _probs(reference), atol=1e-5, rtol=0)
