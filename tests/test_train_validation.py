"""Validation runs the forward pass prediction runs: the same probabilities, the labels ``predict`` would write
(in float32, whatever autocast training used on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import train
from pipeline.model import logits_to_probs
from pipeline.runner import ModelRunner, ModelSpec
from pipeline.training.data import grid_tiles, open_pairs, read_raw_tile, read_tile
from pipeline.training.forward import forward_logits, normalised_on_device
from pipeline.training.masks import IGNORE, MaskEncoding
from pipeline.training.metrics import Confusion
from sample_data.scene import synthesize
from tiling.grid import resolve_overlap
from tiling.writers.encode import to_labels

from .conftest import write_geotiff

NAMES = ("background", "building")
TINY = {"base_width": 4, "depth": 2, "tile": 64, "batch_size": 4, "class_names": NAMES, "threads": 2, "plot": False}


def test_validation_scores_are_those_of_predictions_labels(tmp_path: Path) -> None:
    """Validation's forward pass gives the probabilities ``ModelRunner.probabilities`` (what ``predict`` runs)
    gives on the same raw tiles, and the run's scores are those of the labels ``predict`` makes of them."""
    rgb, truth = synthesize(0, 0, 160, 160, seed=3)
    image = str(write_geotiff(tmp_path / "scene.tif", np.maximum(rgb, 1)))
    mask = str(write_geotiff(tmp_path / "truth.tif", truth[np.newaxis]))
    # Trained under bf16 autocast (amp on: on any CPU), validated in float32, as predict runs by default.
    report = train(images=[image], masks=[mask], out=str(tmp_path / "m.safetensors"), epochs=1, steps_per_epoch=2,
                   val_overlap=16, amp="on", **TINY)  # fmt: skip
    assert report.precision == "bf16"
    assert report.model is not None and report.scores is not None
    pairs = open_pairs([image], [mask], None, MaskEncoding.from_options("ids", NAMES, None, None), "validation")
    runner = ModelRunner(ModelSpec.for_model(report.model))
    confusion = Confusion(2)
    tiles = list(grid_tiles(pairs, 64, resolve_overlap(16, 64)))
    try:
        for start in range(0, len(tiles), 4):  # the run's batch size: the same sums in the convolutions
            group = tiles[start : start + 4]
            read = [read_raw_tile(pairs[0], t.row, t.col, 64) for t in group]
            raw, valid = np.stack([r[0] for r in read]), np.stack([r[1] for r in read])
            probs = runner.probabilities(raw, valid, report.normalization)
            x = normalised_on_device(raw, valid, report.normalization, "cpu")
            with torch.no_grad():
                validation_probs = logits_to_probs(forward_logits(report.model.model, x))
            np.testing.assert_array_equal(validation_probs.numpy(), probs)
            # the normalisation on the device is the one training tiles get on the CPU
            normalised = np.stack([read_tile(pairs[0], t.row, t.col, 64, report.normalization)[0] for t in group])
            np.testing.assert_array_equal(x.numpy(), normalised)
            for t, (_, _, label, _), p in zip(group, read, probs, strict=True):
                scored = np.full_like(label, IGNORE)
                scored[t.own_rows, t.own_cols] = label[t.own_rows, t.own_cols]
                confusion.add(to_labels(p, 0.5), scored)
    finally:
        runner.close()
        pairs[0].close()
    assert confusion.matrix.sum() == 160 * 160
    expected = confusion.scores(NAMES)
    assert expected.pixel_error == report.scores.pixel_error
    np.testing.assert_array_equal(expected.dice, report.scores.dice)
