"""The process's model cache, its thread counts and the one place ``auto`` is decided."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np

from pipeline import load_checkpoint
from pipeline.cache import model_cache
from pipeline.devices import auto_device, process_device, resolve_device
from pipeline.runner import ModelSpec


def _forward_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "tilewise-forward"}


def test_a_spec_loads_its_checkpoint_once_and_release_closes_the_runners(checkpoint) -> None:
    cache = model_cache()
    loads = cache.loads
    spec = ModelSpec.for_checkpoint(checkpoint, batch_size=1)
    runner = cache.runner(spec)
    assert cache.runner(ModelSpec.for_checkpoint(checkpoint, batch_size=1)) is runner
    assert cache.loads == loads + 1
    assert cache.is_idle(ModelSpec.for_checkpoint(checkpoint, batch_size=2))  # not loaded: nothing queued

    before = _forward_threads()
    image = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    with runner.queued(image, None, [(0, 0), (64, 64)], 64, runner.card.normalization) as results:
        assert sum(len(origins) for origins, _ in results) == 2
    started = _forward_threads() - before
    assert started and cache.is_idle(spec)

    cache.release()
    assert not any(t.is_alive() for t in started)
    assert cache.runner(spec) is not runner and cache.loads == loads + 2


def test_a_model_in_memory_travels_with_its_spec_and_loads_nothing(checkpoint) -> None:
    model = load_checkpoint(checkpoint)
    spec = ModelSpec.for_model(model, batch_size=1)
    assert spec == ModelSpec.for_model(model, batch_size=1)
    assert hash(spec) == hash(ModelSpec.for_model(model, batch_size=1))
    assert "held" not in repr(spec)
    loads = model_cache().loads
    assert model_cache().runner(spec).model is model.model
    assert model_cache().loads == loads


def test_auto_is_decided_in_one_place() -> None:
    assert resolve_device("auto") == process_device("auto") == auto_device()
    assert resolve_device("auto", here=False) == "auto"
    assert process_device("cuda:1") == "cuda:1" and process_device("cpu") == "cpu"


def test_the_forward_pool_and_the_batch_sizer_import_without_torch() -> None:
    code = "import sys, pipeline.forward_pool, pipeline.batch_sizer; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
