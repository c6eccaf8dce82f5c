"""Training a valid-convolution model: tiles read with their context mirrored at the border, labels and weights
cropped to the network's output, validation on abutting tiles, and the CLI from train to predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import load_checkpoint, train
from pipeline.cli import main
from pipeline.model import UNetConfig
from pipeline.training.augment import Augmentation
from pipeline.training.batches import BatchSpec, TrainingBatches
from pipeline.training.data import TileSampler, open_pairs, survey
from pipeline.training.masks import IGNORE, MaskEncoding
from pipeline.training.validation import ValidationGrid, _read_group
from pipeline.training.windows import MirroredTile, PaddedTile, training_tile
from sample_data.scene import synthesize

from .conftest import write_geotiff

NAMES = ("background", "building")
#: depth 2: k = 4, c = 20; a 32 px output tile reads 72 px.
TINY = {"base_width": 4, "depth": 2, "tile": 32, "batch_size": 2, "class_names": NAMES, "threads": 2, "plot": False}


@pytest.fixture
def scene(tmp_path: Path) -> tuple[str, str, np.ndarray, np.ndarray]:
    """A 90 × 110 crop of the synthetic scene (no side a multiple of the tile) and its 0/1 truth."""
    rgb, truth = synthesize(0, 0, 90, 110, seed=3)
    rgb = np.maximum(rgb, 1)
    image = write_geotiff(tmp_path / "scene.tif", rgb)
    mask = write_geotiff(tmp_path / "truth.tif", truth[np.newaxis])
    return str(image), str(mask), rgb, truth


def _pairs(scene):
    return open_pairs([scene[0]], [scene[1]], None, MaskEncoding.from_options("ids", NAMES, None, None), "training")


def test_a_valid_models_tile_is_its_output_read_with_mirrored_context(scene) -> None:
    _, _, rgb, truth = scene
    window = training_tile(UNetConfig(depth=3, padding="valid"), 24)
    assert window == MirroredTile(24, 44, 4) and (window.input_size, window.output_size) == (116, 28)
    assert training_tile(UNetConfig(depth=3), 24) == PaddedTile(24)
    pairs = _pairs(scene)
    raw, valid, labels, weights = window.read(pairs[0], 70, -4)  # past the bottom and the left edge
    pairs[0].close()
    pad = ((44, 116), (48, 116))  # enough for the window: rows 26..142, cols -48..68
    np.testing.assert_array_equal(raw, np.pad(rgb, ((0, 0), *pad), mode="reflect")[:, 70 : 70 + 116, 0:116])
    np.testing.assert_array_equal(labels, np.pad(truth, pad, mode="reflect")[70 : 70 + 116, 0:116])
    assert valid.all() and weights is None
    np.testing.assert_array_equal(window.crop(labels), labels[44:72, 44:72])  # the output region


def test_batches_hold_whole_inputs_and_labels_of_the_output_region(scene) -> None:
    pairs = _pairs(scene)
    found = survey(pairs, 16, NAMES)
    window = training_tile(UNetConfig(depth=2, padding="valid"), 32)
    spec = BatchSpec(seed=1, epochs=1, steps_per_epoch=2, batch_size=3, tile=32)
    plain = TrainingBatches(
        spec, pairs, TileSampler(pairs, found, 32, 0.0), found.normalization, Augmentation(False, False), window
    )
    images, labels, _ = plain.batch(1, 0)
    assert images.shape == (3, 3, 72, 72) and labels.shape == (3, 32, 32)
    # Without augmentation the labels are those of the output tile the sampler drew.
    rng = np.random.default_rng([1, 1, 0])
    rng.integers(2**62)  # the augmentation's seed, drawn first
    _, row, col = plain.sampler.sample(rng)
    expected = window.crop(window.read(pairs[0], row, col)[2])
    np.testing.assert_array_equal(labels[0].numpy(), expected)
    elastic = TrainingBatches(
        spec, pairs, TileSampler(pairs, found, 32, 0.5), found.normalization, Augmentation(elastic=True), window
    )
    images, labels, _ = elastic.batch(1, 1)
    assert images.shape == (3, 3, 72, 72) and labels.shape == (3, 32, 32) and (labels != IGNORE).any()
    pairs[0].close()


def test_cli_trains_a_valid_model_and_predicts_with_it(scene, tmp_path: Path, capsys) -> None:
    image, mask, _, truth = scene
    out = tmp_path / "valid.safetensors"
    flags = ["--images", image, "--masks", mask, "--out", out, "--epochs", "2", "--steps-per-epoch", "3"]
    tiny = ["--base-width", "4", "--depth", "2", "--tile", "32", "--batch-size", "2", "--padding", "valid"]
    assert main([str(a) for a in ["train", *flags, *tiny, "--no-plot", "--lr", "0.01"]]) == 0, capsys.readouterr().err
    card = load_checkpoint(out).card
    assert card.model.padding == "valid" and card.tile_size == 32
    probs = tmp_path / "probs.zarr"
    assert (
        main([str(a) for a in ["predict", image, probs, "--model", out, "--output-kind", "probs", "--chunk", "48"]])
        == 0
    )
    result = zarr.open_group(str(probs), mode="r")["probs"][:]
    assert result.shape == (1, *truth.shape) and np.isfinite(result).all()


def test_validation_scores_every_pixel_once_on_abutting_tiles(scene, tmp_path: Path) -> None:
    image, mask, _, truth = scene
    pairs = _pairs(scene)
    window = training_tile(UNetConfig(depth=2, padding="valid"), 32)
    grid = ValidationGrid.over(pairs, 32, 8, survey(pairs, 16, NAMES).normalization, NAMES, 2, window)
    assert [(t.row, t.col) for t in grid.tiles][:4] == [(0, 0), (0, 32), (0, 64), (0, 96)] and len(grid.tiles) == 12
    raw, _, labels = _read_group(pairs, grid.tiles, window)
    assert raw.shape == (12, 3, 72, 72) and labels.shape == (12, 32, 32)
    scored = np.zeros(truth.shape, int)
    for t, label in zip(grid.tiles, labels, strict=True):
        rows, cols = label.shape
        inside = label[: min(rows, truth.shape[0] - t.row), : min(cols, truth.shape[1] - t.col)]
        np.testing.assert_array_equal(inside, truth[t.row : t.row + rows, t.col : t.col + cols])
        scored[t.row : t.row + rows, t.col : t.col + cols] += 1
        assert (label[inside.shape[0] :] == IGNORE).all() and (label[:, inside.shape[1] :] == IGNORE).all()
    assert (scored == 1).all()
    pairs[0].close()
    report = train(images=[image], masks=[mask], out=str(tmp_path / "m.safetensors"), epochs=1, steps_per_epoch=2,
                   padding="valid", **TINY)  # fmt: skip
    assert report.scores is not None and np.isfinite(report.history[-1]["val_loss"])
