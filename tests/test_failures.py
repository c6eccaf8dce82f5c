"""A run that fails mid-way stops its threads: one error line, exit 1, no thread left running the model.

The reported case: a striped GeoTIFF cut short, whose first rows read and whose later strips are gone. The
first chunk queues the tiles of its first rows for the forward pool, then fails to read the rest; a pool thread
was still running one of those tiles when the interpreter exited, and the process aborted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import predict
from pipeline.devices import cpu_threads, process_forward_threads
from pipeline.forward_pool import ForwardPool, ForwardPoolStopped, TileRequest
from tiling import Normalization, TilewiseError

from .conftest import make_checkpoint, random_image, write_geotiff

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "sample_data" / "demo_model.safetensors"
NORM = Normalization((0.0,), (1.0,))


def _cut_striped_geotiff(folder: Path, name: str = "cut.tif") -> Path:
    """A striped (not tiled) 3 × 1024 × 1024 deflate GeoTIFF cut to 60 % of its bytes: its header and first
    strips are intact (GDAL writes the directory first), the later strips are gone."""
    pixels = np.random.default_rng(3).integers(0, 256, (3, 1024, 1024), dtype=np.uint8)
    path = write_geotiff(folder / name, pixels, tiled=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipeline.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


def _forward_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "tilewise-forward"}


@pytest.mark.parametrize("plan", [[], ["--chunk", "256", "--workers", "3"]], ids=["one-chunk", "three-in-flight"])
def test_a_run_that_fails_mid_run_exits_1_with_one_line(tmp_path: Path, plan: list[str]) -> None:
    cut = _cut_striped_geotiff(tmp_path)
    out = tmp_path / "out.tif"
    done = _cli("predict", cut, out, "--model", DEMO_MODEL, *plan)
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tilewise: error: ") and "cut.tif" in lines[0], lines[0]
    assert "terminate" not in done.stderr
    assert not out.exists()


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "big.tif", random_image((3, 512, 512), seed=5))
    model = make_checkpoint(tmp_path / "m.safetensors", tile=64, depth=3, base_width=8)
    out = tmp_path / "out.zarr"
    command = [sys.executable, "-m", "pipeline.cli", "predict", str(scene), str(out), "--model", str(model)]
    command += ["--chunk", "128", "--workers", "2", "--batch-size", "1", "--output-kind", "probs"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    store = out.with_name("out.zarr.partial")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (store / "done" / "zarr.json").exists():
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be interrupted"
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, (process.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilewise: interrupted"), err
    assert not out.exists()


def test_a_failed_run_leaves_no_forward_thread_alive(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "m.safetensors", tile=64)
    options = {"device": "cpu", "batch_size": 1, "workers": 2}
    before = _forward_threads()
    good = write_geotiff(tmp_path / "good.tif", random_image((3, 200, 200)))
    predict(good, tmp_path / "good.tif.zarr", model, **options)
    assert _forward_threads() - before, "a run that succeeds keeps its pool's threads for the next run"

    cut = _cut_striped_geotiff(tmp_path)
    out = tmp_path / "cut_labels.tif"
    with pytest.raises(TilewiseError, match=r"cut\.tif"):
        predict(cut, out, model, **options)
    assert not _forward_threads() - before
    assert not out.exists()


class _Batches:
    """A stand-in forward pass that holds batch ``hold`` until ``release`` is set."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.held, self.release = threading.Event(), threading.Event()
        self.finished: list[tuple[int, int]] = []

    def __call__(self, request: TileRequest, origins: list[tuple[int, int]]) -> np.ndarray:
        if origins[0][1] == self.hold:
            self.held.set()
            self.release.wait(timeout=60)
        self.finished.append(origins[0])
        return np.zeros((len(origins), 1, 1, 1), np.float32)


def _request(tiles: int, row: int = 0) -> TileRequest:
    return TileRequest(np.zeros((1, 8, 8), np.uint8), None, [(row, x) for x in range(tiles)], 4, NORM)


def test_a_failed_caller_leaves_only_once_the_batches_it_started_are_done() -> None:
    batches = _Batches(hold=1)
    pool = ForwardPool(lambda: 1, batches)
    with pytest.raises(ValueError, match="caller failed"), pool.queued(_request(20), threads=1):
        assert batches.held.wait(timeout=60)
        threading.Timer(0.2, batches.release.set).start()  # after the caller has started leaving
        raise ValueError("caller failed")
    # The batch the thread held when the caller failed ran to its end first, and the tiles not yet taken were
    # given up.
    assert batches.finished == [(0, 0), (0, 1)]
    pool.close()


def test_stop_gives_up_queued_tiles_joins_the_threads_and_the_pool_starts_again() -> None:
    batches = _Batches(hold=0)
    pool = ForwardPool(lambda: 1, batches)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            list(pool.run(_request(10), threads=1))
        except BaseException as error:
            errors.append(error)

    waiting = threading.Thread(target=caller)
    waiting.start()
    assert batches.held.wait(timeout=60)
    threads = pool.threads
    threading.Timer(0.2, batches.release.set).start()  # after the queued tiles were given up
    pool.stop()
    waiting.join(timeout=60)
    assert threads and not any(t.is_alive() for t in threads) and pool.threads == []
    assert len(errors) == 1 and isinstance(errors[0], ForwardPoolStopped)
    assert [o for origins, _ in pool.run(_request(3, row=5), threads=2) for o in origins] == [(5, 0), (5, 1), (5, 2)]
    pool.close()


def test_a_run_that_fails_stops_the_pools_and_restores_the_thread_counts() -> None:
    pool = ForwardPool(lambda: 1, _Batches(hold=-1))
    process_forward_threads().attach(pool)
    torch_threads, count = torch.get_num_threads(), process_forward_threads().count
    with pytest.raises(KeyboardInterrupt), cpu_threads(2):
        assert process_forward_threads().count == 2
        assert len(list(pool.run(_request(4), threads=2))) == 4
        threads = pool.threads
        raise KeyboardInterrupt
    assert threads and not any(t.is_alive() for t in threads) and pool.threads == []
    assert (torch.get_num_threads(), process_forward_threads().count) == (torch_threads, count)


def test_a_run_that_succeeds_keeps_the_pool_threads() -> None:
    pool = ForwardPool(lambda: 1, _Batches(hold=-1))
    process_forward_threads().attach(pool)
    with cpu_threads(2):
        assert len(list(pool.run(_request(4), threads=2))) == 4
    assert pool.threads and all(t.is_alive() for t in pool.threads)
    pool.close()


def _cut_before_first_directory(source: Path, folder: Path, name: str) -> Path:
    """``source`` cut just before its first image directory (its header points past the end)."""
    import tifffile

    with tifffile.TiffFile(source) as tif:
        first = tif.pages.first.offset
    cut = folder / name
    cut.write_bytes(source.read_bytes()[:first])
    return cut


def test_a_slide_cut_before_its_first_directory_is_one_line(tmp_path: Path) -> None:
    from .test_slides import write_pyramid

    slide = write_pyramid(tmp_path / "slide.svs", random_image((3, 600, 700), seed=2))
    header_only = tmp_path / "header-only.tif"
    header_only.write_bytes(slide.read_bytes()[:16])
    for cut in (_cut_before_first_directory(slide, tmp_path, "cut.svs"), header_only):
        done = _cli("predict", cut, tmp_path / "out.tif", "--model", DEMO_MODEL)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("tilewise: error: ") and cut.name in lines[0], lines[0]
        assert "not a readable TIFF" in lines[0] and "internal error" not in lines[0], lines[0]
    assert not list(tmp_path.glob("out.tif*"))


def test_bad_input_on_a_cluster_is_the_same_one_line(tmp_path: Path) -> None:
    """A task that fails on a worker process reaches the user as the threads' one error line: no worker log."""
    import tifffile

    path = write_geotiff(tmp_path / "big.tif", random_image((3, 512, 512), seed=9), compress="deflate")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages.first.dataoffsets[40], tif.pages.first.databytecounts[40]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(count)  # a tile of zeros is not a deflate stream
    path.write_bytes(bytes(data))
    done = _cli("predict", path, tmp_path / "out.tif", "--model", DEMO_MODEL, "--cluster", "local:1", "--chunk", "128")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tilewise: error: failed to read") and "big.tif" in lines[0], lines[0]
    assert not (tmp_path / "out.tif").exists()
