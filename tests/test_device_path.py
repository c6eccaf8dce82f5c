"""The GPU path: batches staged in pinned buffers and copied on a side stream give the same probabilities as
plain copies, the buffers are reused, and the GPU benchmark says when it cannot run."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline import predict
from pipeline.runner import ModelRunner, ModelSpec, _stacked

from .conftest import random_image, write_geotiff

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tiles(seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """A raw image, its validity (a few rows left out) and the origins of 13 tiles of 64 px over it."""
    image = np.random.default_rng(seed).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    valid = np.ones((256, 256), bool)
    valid[:5] = False
    origins = [(y, x) for y in (0, 64, 128, 192) for x in (0, 64, 128)] + [(17, 33)]
    return image, valid, origins


def _staged(runner: ModelRunner, image: np.ndarray, valid: np.ndarray, origins) -> list[tuple[list, np.ndarray]]:
    with runner.queued(image, valid, origins, 64, runner.card.normalization) as results:
        return list(results)


@needs_cuda
def test_staged_batches_give_the_probabilities_of_plain_copies(checkpoint) -> None:
    runner = ModelRunner(ModelSpec.for_checkpoint(checkpoint, device="cuda", batch_size=4))
    image, valid, origins = _tiles(0)
    batches = _staged(runner, image, valid, origins)
    assert [o for batch_origins, _ in batches for o in batch_origins] == origins
    assert [len(batch_origins) for batch_origins, _ in batches] == [4, 4, 4, 1]
    for batch_origins, probs in batches:
        plain = runner.probabilities(
            _stacked(image, batch_origins, 64), _stacked(valid, batch_origins, 64), runner.card.normalization
        )
        np.testing.assert_allclose(probs, plain, rtol=0, atol=1e-6)
    assert runner.tiles_run == len(origins) and runner.forward_gpu_seconds > 0
    runner.close()


@needs_cuda
def test_pinned_buffers_are_allocated_once_and_reused(checkpoint) -> None:
    runner = ModelRunner(ModelSpec.for_checkpoint(checkpoint, device="cuda", batch_size=4))
    image, valid, origins = _tiles(1)
    _staged(runner, image, valid, origins)
    assert runner._stager is not None
    allocated = runner._stager.allocations
    assert 2 <= allocated <= 4  # the image's and the validity's, for the batch and the one staged beside it
    for seed in (2, 3, 4):
        _staged(runner, *_tiles(seed))
    assert runner._stager.allocations == allocated
    runner.close()


@needs_cuda
def test_callers_staging_at_the_same_time_get_their_own_tiles(checkpoint) -> None:
    runner = ModelRunner(ModelSpec.for_checkpoint(checkpoint, device="cuda", batch_size=2))
    inputs = [_tiles(seed) for seed in range(4)]
    alone = [_staged(runner, *tiles) for tiles in inputs]
    together: dict[int, list] = {}

    def call(k: int) -> None:
        together[k] = _staged(runner, *inputs[k])

    callers = [threading.Thread(target=call, args=(k,)) for k in range(len(inputs))]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=120)
    for k, batches in enumerate(alone):
        for (origins, probs), (origins_together, probs_together) in zip(batches, together[k], strict=True):
            assert origins == origins_together
            np.testing.assert_array_equal(probs, probs_together)
    runner.close()


@needs_cuda
def test_a_run_on_the_gpu_matches_the_cpu(checkpoint, tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 300, 260), seed=7))
    options = {"tile": 64, "overlap": 16, "chunk": 128, "output_kind": "probs"}
    for device in ("cpu", "cuda"):
        predict(scene, tmp_path / f"{device}.zarr", checkpoint, device=device, **options)
    on_cpu, on_gpu = (zarr.open_group(str(tmp_path / f"{d}.zarr"), mode="r")["probs"][:] for d in ("cpu", "cuda"))
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-3, rtol=0)  # TF32 convolutions on the GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="the benchmark runs where there is a CUDA device")
def test_the_gpu_benchmark_says_in_one_line_that_it_needs_cuda() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 2, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], done.stdout
