"""The inference engines (``--backend``): conversion once and cached on disk, a damaged cache entry rebuilt, the
same output for every chunking with each engine and on a local cluster, and one-line errors for an engine that is
missing or cannot run the precision asked for."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import predict
from pipeline.backends import candidates, check_backend, installed
from pipeline.backends import conversion as conv
from pipeline.cache import model_cache
from pipeline.cli import main
from tiling.errors import OptionError

from .conftest import make_checkpoint, random_image, write_geotiff

TILE, OVERLAP = 64, 20
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}


def engine(name: str):
    """``name`` as a test parameter, skipped with the reason where its extra is not installed."""
    marks = []
    if name != "torch" and not installed(name):
        marks.append(pytest.mark.skip(reason=f"{name} is not installed (pip install 'tilewise[{EXTRAS[name]}]')"))
    return pytest.param(name, marks=marks, id=name)


OPTIONAL = [engine("onnxruntime"), engine("openvino")]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test converts into its own cache folder (never the user's)."""
    folder = tmp_path / "engine-cache"
    monkeypatch.setenv(conv.CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("backends")
    path = write_geotiff(folder / "scene.tif", random_image((3, 150, 170), seed=5))
    checkpoint = make_checkpoint(folder / "model.safetensors", tile=TILE, depth=2, classes=3, seed=2)
    return path, checkpoint


def _probs(scene: tuple[Path, Path], out: Path, **options: object) -> np.ndarray:
    path, checkpoint = scene
    settings = {"tile": TILE, "overlap": OVERLAP, "output_kind": "probs", **options}
    report = predict(path, out, checkpoint, **settings)
    if "backend" in options and options["backend"] != "auto":
        assert report.backend == options["backend"]
    return zarr.open_group(str(out), mode="r")["probs"][:]


@pytest.mark.parametrize("name", [engine("torch"), *OPTIONAL])
def test_each_engine_gives_the_same_output_for_every_chunking(name: str, scene, tmp_path: Path) -> None:
    baseline = _probs(scene, tmp_path / "whole.zarr", backend=name, chunk=1000, batch_size=1)
    for chunk, batch in ((40, 3), (64, 1), (100, 2)):
        probs = _probs(scene, tmp_path / f"c{chunk}.zarr", backend=name, chunk=chunk, batch_size=batch)
        np.testing.assert_allclose(probs, baseline, atol=1e-5, rtol=0, err_msg=f"{name}: chunk {chunk} batch {batch}")
    if name != "torch":  # the same model: the engines agree with torch to float32 rounding
        torch_probs = _probs(scene, tmp_path / "torch.zarr", backend="torch", chunk=1000, batch_size=1)
        np.testing.assert_allclose(baseline, torch_probs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", OPTIONAL)
def test_a_second_run_finds_the_converted_model_on_disk(name: str, scene, tmp_path: Path, _cache_dir: Path) -> None:
    before = conv.conversions
    first = _probs(scene, tmp_path / "first.zarr", backend=name)
    assert conv.conversions == before + 1
    assert len(list((_cache_dir / "models").iterdir())) == 1
    model_cache().release()  # as a new process would: the runner and its engine are gone, the disk cache stays
    second = _probs(scene, tmp_path / "second.zarr", backend=name)
    assert conv.conversions == before + 1
    np.testing.assert_array_equal(second, first)
    # Another tile size is another conversion.
    _probs(scene, tmp_path / "other.zarr", backend=name, tile=2 * TILE)
    assert conv.conversions == before + 2


@pytest.mark.parametrize("name", OPTIONAL)
def test_a_damaged_cache_entry_is_rebuilt_not_loaded(name: str, scene, tmp_path: Path, _cache_dir: Path) -> None:
    first = _probs(scene, tmp_path / "first.zarr", backend=name)
    (entry,) = (_cache_dir / "models").iterdir()
    files = [p for p in entry.iterdir() if p.name != conv.MANIFEST]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: the file still parses, its digest does not match
    largest.write_bytes(bytes(data))
    model_cache().release()
    before = conv.conversions
    second = _probs(scene, tmp_path / "second.zarr", backend=name)
    assert conv.conversions == before + 1
    np.testing.assert_array_equal(second, first)
    (rebuilt,) = (_cache_dir / "models").iterdir()
    assert rebuilt.name == entry.name and conv._verified(rebuilt)


def test_the_cache_rebuilds_a_truncated_or_incomplete_entry(_cache_dir: Path) -> None:
    built: list[Path] = []

    def build(folder: Path) -> None:
        built.append(folder)
        (folder / "model.bin").write_bytes(b"weights" * 100)

    parts = {"weights_sha256": "x", "engine": "test"}
    entry = conv.converted(parts, build)
    assert conv.converted(parts, build) == entry and len(built) == 1
    (entry / "model.bin").write_bytes(b"weights")  # truncated
    assert conv.converted(parts, build) == entry and len(built) == 2
    (entry / conv.MANIFEST).unlink()  # a manifest never written
    assert conv.converted(parts, build) == entry and len(built) == 3
    (entry / "extra.bin").write_bytes(b"")  # a file the manifest does not list
    assert conv.converted(parts, build) == entry and len(built) == 4
    assert (entry / "model.bin").read_bytes() == b"weights" * 100
    assert conv.converted({**parts, "precision": "bf16"}, build) != entry and len(built) == 5


def test_a_missing_engine_is_one_line_naming_the_extra(scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(OptionError, match=r"^backend openvino is not installed: pip install 'tilewise\[openvino\]'$"):
        _probs(scene, tmp_path / "out.zarr", backend="openvino")
    assert "openvino" not in candidates("cpu", "fp32")
    with pytest.raises(OptionError, match="unknown backend"):
        _probs(scene, tmp_path / "out.zarr", backend="tensorrt")


def test_engines_refuse_what_they_cannot_run() -> None:
    if installed("onnxruntime"):
        with pytest.raises(OptionError, match="onnxruntime runs fp32 on a CPU, not bf16"):
            check_backend("onnxruntime", "cpu", "bf16")
        with pytest.raises(OptionError, match="runs on CPUs"):
            check_backend("onnxruntime", "cuda:0", "fp32")
    assert candidates("cuda:0", "fp32") == ["torch"]
    assert "onnxruntime" not in candidates("cpu", "bf16")


def test_auto_keeps_one_timed_engine_for_every_tile(scene, tmp_path: Path) -> None:
    installed_engines = candidates("cpu", "fp32")
    if len(installed_engines) == 1:
        pytest.skip("only torch is installed: auto has nothing to time (pip install 'tilewise[onnx,openvino]')")
    path, checkpoint = scene
    report = predict(
        path, tmp_path / "auto.zarr", checkpoint, tile=TILE, overlap=OVERLAP, output_kind="probs", backend="auto"
    )
    assert report.backend in installed_engines
    runner = next(iter(model_cache()._runners.values()))
    assert set(runner.backend_timings) == set(installed_engines)
    assert min(runner.backend_timings, key=runner.backend_timings.__getitem__) == report.backend
    auto = zarr.open_group(str(tmp_path / "auto.zarr"), mode="r")["probs"][:]
    model_cache().release()
    chosen = _probs(scene, tmp_path / "chosen.zarr", backend=report.backend)
    np.testing.assert_allclose(auto, chosen, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", [engine("onnxruntime")])
def test_an_engine_on_a_local_cluster_gives_the_threads_output(
    name: str, scene, tmp_path: Path, _cache_dir: Path, capsys
) -> None:
    """``--cluster local:1 --backend onnxruntime``: the worker process runs the engine (the run's final line
    names it), finds the model converted by the run on threads in the shared cache, and writes what the run on
    threads wrote."""
    pytest.importorskip("distributed")
    threads = _probs(scene, tmp_path / "threads.zarr", backend=name, chunk=96)
    assert len(list((_cache_dir / "models").iterdir())) == 1
    path, checkpoint = scene
    out = tmp_path / "cluster.zarr"
    argv = ["predict", path, out, "--model", checkpoint, "--cluster", "local:1", "--backend", name, "--chunk", "96"]
    argv += ["--tile", TILE, "--overlap", OVERLAP, "--output-kind", "probs"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"({name}) on " in err and "1 in flight" in err, err
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["probs"][:], threads, atol=1e-5, rtol=0)
    assert len(list((_cache_dir / "models").iterdir())) == 1  # the same key: one converted model for both
