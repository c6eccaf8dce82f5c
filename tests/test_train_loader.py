"""Training batches through torch.utils.data: the same with and without workers, resumable, errors intact,
workers stopped however a run ends."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import TrainOptions, train
from pipeline.training.augment import Augmentation
from pipeline.training.batches import BatchSpec, TrainingBatches, loading
from pipeline.training.data import Survey, TileSampler, open_pairs, survey
from pipeline.training.masks import MaskEncoding
from pipeline.training.state import fingerprint
from sample_data.scene import synthesize
from tiling.errors import InputError, OptionError
from tiling.normalize import Normalization

from .conftest import write_geotiff

NAMES = ("background", "building")
TINY = {
    "base_width": 4,
    "depth": 2,
    "tile": 64,
    "batch_size": 4,
    "class_names": NAMES,
    "threads": 2,
    "plot": False,
    "elastic": True,  # every augmentation draws from the batch's generator
    "oversample": 0.5,
}


@pytest.fixture
def scene(tmp_path: Path) -> tuple[str, str]:
    """A 160 × 160 crop of the synthetic scene and its 0/1 truth."""
    rgb, truth = synthesize(0, 0, 160, 160, seed=3)
    image = write_geotiff(tmp_path / "scene.tif", np.maximum(rgb, 1))
    mask = write_geotiff(tmp_path / "truth.tif", truth[np.newaxis])
    return str(image), str(mask)


@pytest.fixture
def batches(scene) -> Iterator[TrainingBatches]:
    """Two epochs of three batches of the scene (oversampling, every augmentation)."""
    encoding = MaskEncoding.from_options("ids", NAMES, None, None)
    pairs = open_pairs(list(scene[:1]), list(scene[1:]), None, encoding, "training")
    found = survey(pairs, 32, NAMES)
    spec = BatchSpec(seed=5, epochs=2, steps_per_epoch=3, batch_size=3, tile=64)
    augment = Augmentation(brightness=0.1, contrast=0.1, elastic=True)
    yield TrainingBatches(spec, pairs, TileSampler(pairs, found, 64, 0.5), found.normalization, augment)
    pairs[0].close()


@pytest.fixture
def no_workers_left():
    """Checks that a test leaves no child processes behind (the loader's workers are stopped)."""
    before = set(multiprocessing.active_children())
    yield
    assert set(multiprocessing.active_children()) <= before


def test_batches_are_the_same_with_and_without_loader_workers(batches, no_workers_left) -> None:
    with loading(batches, 1, 0, "cpu") as items:
        in_process = list(items)
    assert items.worker_cpu_seconds == 0
    with loading(batches, 1, 2, "cpu") as items:
        from_workers = list(items)
    assert items.worker_cpu_seconds > 0  # counted for the run's CPU time
    assert len(in_process) == len(from_workers) == 6
    for (a_images, a_labels, _), (b_images, b_labels, _) in zip(in_process, from_workers, strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    assert not torch.equal(in_process[0][0], in_process[1][0])  # the steps differ
    # A loader that starts at epoch 2 (a resumed run) gives epoch 2's batches.
    with loading(batches, 2, 1, "cpu") as items:
        later = list(items)
    assert len(later) == 3
    for (a_images, a_labels, _), (b_images, b_labels, _) in zip(in_process[3:], later, strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)


def test_0_and_2_loader_workers_give_the_same_run(scene, tmp_path: Path, no_workers_left) -> None:
    image, mask = scene
    common = {"images": [image], "masks": [mask], "epochs": 2, "steps_per_epoch": 3, "lr": 0.01, **TINY}
    alone = train(out=str(tmp_path / "alone.safetensors"), loader_workers=0, **common)
    helped = train(out=str(tmp_path / "helped.safetensors"), loader_workers=2, **common)
    assert [_without_time(r) for r in alone.history] == [_without_time(r) for r in helped.history]
    a = torch.load(alone.state, weights_only=True)["model"]
    b = torch.load(helped.state, weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_with_other_loader_workers_continues_exactly(scene, tmp_path: Path) -> None:
    image, mask = scene
    common = {"images": [image], "masks": [mask], "epochs": 2, "steps_per_epoch": 3, "schedule": "onecycle", **TINY}
    straight = train(out=str(tmp_path / "straight.safetensors"), loader_workers=0, **common)
    before = set(multiprocessing.active_children())
    stopped = tmp_path / "stopped.safetensors"
    with pytest.raises(_Stop):  # interrupted after epoch 1 while the workers build epoch 2's batches
        train(out=str(stopped), loader_workers=2, on_epoch=_stop, **common)
    assert set(multiprocessing.active_children()) <= before  # the interrupted run's workers were shut down
    resumed = train(out=str(stopped), loader_workers=1, resume=True, **common)
    assert [r["epoch"] for r in resumed.history] == [1, 2]  # epoch 1 read back from the CSV (rounded there)
    assert _without_time(resumed.history[-1]) == _without_time(straight.history[-1])
    a = torch.load(straight.state, weights_only=True)["model"]
    b = torch.load(resumed.state, weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


class _Stop(Exception):
    pass


def _stop(row: dict) -> None:
    raise _Stop


def _without_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "seconds"}


def test_an_error_in_a_worker_reaches_the_caller_as_raised(tmp_path: Path, no_workers_left) -> None:
    """A mask value the survey never saw (here: no survey) fails in the worker; the caller gets the same one-line
    ``InputError`` it would get without workers."""
    image = write_geotiff(tmp_path / "img.tif", np.full((1, 64, 64), 100, np.uint8))
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, 10, 20] = 7
    mask = write_geotiff(tmp_path / "mask.tif", labels)
    pairs = open_pairs([str(image)], [str(mask)], None, MaskEncoding.from_options("ids", NAMES, None, None), "t")
    found = Survey(Normalization((100.0,), (1.0,)), np.array([64 * 64, 0]), 32, [np.ones((2, 2, 2), np.int64)])
    spec = BatchSpec(seed=0, epochs=1, steps_per_epoch=2, batch_size=1, tile=64)
    batches = TrainingBatches(spec, pairs, TileSampler(pairs, found, 64, 0.0), found.normalization, Augmentation())
    for workers in (0, 1):
        with pytest.raises(InputError) as raised, loading(batches, 1, workers, "cpu") as items:
            next(items)
        assert "value 7 at row 10, col 20" in str(raised.value) and "\n" not in str(raised.value)
    pairs[0].close()


def test_loader_workers_is_checked_and_left_out_of_the_resume_fingerprint() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(OptionError, match="loader_workers"):
            TrainOptions(loader_workers=bad)
    one, three = TrainOptions(loader_workers=1), TrainOptions(loader_workers=3)
    assert fingerprint(one, ["i"], ["m"], []) == fingerprint(three, ["i"], ["m"], [])
    assert fingerprint(one, ["i"], ["m"], []) != fingerprint(one.updated(seed=1), ["i"], ["m"], [])
