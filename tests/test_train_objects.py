"""Training from instance masks: the boundary class and the weight map reach the loss, the card tells predict how
to find the objects and at which pixel size, and bad instance masks are one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import predict, read_card, train
from pipeline.cli import main
from pipeline.training.data import open_pairs, read_tile, survey
from pipeline.training.masks import IGNORE, MaskEncoding
from pipeline.training.options import TrainOptions
from pipeline.training.targets import target_rule

from .conftest import write_geotiff


def _cells(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of dark touching discs on a bright background, and its instance mask (one id per disc)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, 40):
        cy, cx, r = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8), rng.uniform(5, 9)
        ids[(np.hypot(yy - cy, xx - cx) <= r) & (ids == 0)] = k
    image = np.where(ids > 0, 70, 200).astype(np.float32) + rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8)[None].repeat(3, axis=0), ids


@pytest.fixture
def cells(tmp_path: Path) -> dict[str, Path]:
    image, ids = _cells((128, 128), seed=1)
    return {
        "image": write_geotiff(tmp_path / "image.tif", image, crs=None),
        "mask": write_geotiff(tmp_path / "mask.tif", ids[None], crs=None),
    }


def test_instance_masks_teach_a_boundary_class_and_the_weight_map(cells: dict[str, Path]) -> None:
    opts = TrainOptions(images=(str(cells["image"]),), masks=(str(cells["mask"]),), mask_encoding="instances", tile=64)
    assert opts.class_names == ("background", "foreground", "boundary") and opts.weighted
    encoding = MaskEncoding.from_options("instances", opts.class_names, None, None)
    pairs = open_pairs([str(cells["image"])], [str(cells["mask"])], None, encoding, "training", target_rule(opts))
    try:
        found = survey(pairs, 32, opts.class_names)
        assert (found.class_counts > 0).all()  # background, object interiors and boundaries
        _, labels, weights = read_tile(pairs[0], 20, 30, 64, found.normalization)
    finally:
        pairs[0].close()
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 2).any()
    assert weights is not None and weights.max() > 1.0  # gaps between touching discs weigh most
    assert (weights[labels != 0] == 0).all()  # the separation term is on the background only


def test_train_on_instances_then_predict_objects(cells: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cells.safetensors"
    report = train(
        images=[str(cells["image"])],
        masks=[str(cells["mask"])],
        mask_encoding="instances",
        class_names=("background", "cell"),
        out=str(out),
        tile=64,
        base_width=4,
        depth=2,
        epochs=2,
        steps_per_epoch=3,
        batch_size=2,
        mpp=0.5,
        plot=False,
    )
    card = read_card(report.checkpoint)
    assert card.class_names == ("background", "cell", "boundary") and card.pixel_size_um == 0.5
    assert card.instances is not None and card.instances.to_mapping() == {
        "object_classes": [1],
        "growth_classes": [2],
        "radius": 2,
        "min_area": 0,
    }
    assert card.info["weight_map"]["w0"] == 10.0 and card.info["weight_map"]["sigma"] == 5.0
    result = predict(cells["image"], tmp_path / "objects.zarr", report.checkpoint, output_kind="instances")
    assert result.objects is not None and set(result.objects) <= {"cell"}


def test_the_weight_map_changes_the_loss(cells: dict[str, Path]) -> None:
    from pipeline.training.losses import make_loss

    loss = make_loss("ce", binary=False)
    logits = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (1, 8, 8), generator=torch.Generator().manual_seed(1))
    separation = torch.zeros(1, 8, 8)
    assert torch.isclose(loss(logits, labels, separation), loss(logits, labels, None))  # all-zero term: plain CE
    separation[0, :2] = 10.0
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = ((1 + separation) * per_pixel).sum() / (1 + separation).sum()
    assert torch.isclose(loss(logits, labels, separation), expected)


def test_instance_classes_from_a_csv(cells: dict[str, Path], tmp_path: Path) -> None:
    table = tmp_path / "classes.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "class"], [1, "tumour"], [2, "immune"], [3, "tumour"]])
    opts = TrainOptions(
        images=(str(cells["image"]),),
        masks=(str(cells["mask"]),),
        mask_encoding="instances",
        class_names=("background", "tumour", "immune"),
        instance_classes=str(table),
    )
    rule = target_rule(opts)
    assert rule.object_class == {1: 1, 2: 2, 3: 1} and rule.boundary_class == 3
    ids = np.zeros((12, 12), np.int64)
    ids[1:6, 1:6], ids[6:11, 6:11], ids[0, 11] = 2, 5, IGNORE
    labels, _ = rule.targets(ids)
    assert labels[3, 3] == 2 and labels[8, 8] == 1 and labels[1, 1] == 3 and labels[0, 11] == IGNORE


def test_bad_instance_masks_are_one_line_errors(cells: dict[str, Path], tmp_path: Path, capsys) -> None:
    floats = write_geotiff(tmp_path / "floats.tif", np.full((1, 128, 128), 1.5, np.float32), crs=None)
    small = write_geotiff(tmp_path / "small.tif", np.zeros((1, 64, 64), np.uint16), crs=None)
    for mask, words in ((floats, ["float32", "whole-number object ids"]), (small, ["64 x 64", "must match"])):
        argv = ["train", "--images", cells["image"], "--masks", mask, "--mask-encoding", "instances"]
        code = main([str(a) for a in [*argv, "--out", tmp_path / "m.safetensors", "--epochs", "1", "--no-plot"]])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith("tilewise: error: "), err
        for word in words:
            assert word in err[0], err[0]
