"""Validation on a fixed grid of tiles, through the forward pass prediction uses (``forward``).

Every pixel is scored once (see ``grid_tiles``); the loss is the mean over labelled pixels, the scores those of
the labels ``predict`` would write.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tiling.errors import OptionError
from tiling.normalize import Normalization
from tiling.writers.encode import NODATA_UINT8

from .data import GridTile, Pair
from .forward import forward_logits, normalised_on_device, predicted_labels
from .losses import Loss
from .masks import IGNORE
from .metrics import Confusion, Scores
from .windows import PaddedTile, TrainingTile, scored_labels


@dataclass(frozen=True)
class ValidationGrid:
    """What validation runs on: the fixed grid of ``tile``-pixel tiles over ``pairs``, read ``batch_size`` at a
    time, normalised with the training set's ``normalization``."""

    pairs: Sequence[Pair]
    tiles: tuple[GridTile, ...]
    tile: int
    normalization: Normalization
    class_names: tuple[str, ...]
    batch_size: int
    #: What a tile reads and where it is scored (a valid model: its context, mirrored; the centre).
    window: TrainingTile | None = None

    @classmethod
    def over(
        cls,
        pairs: Sequence[Pair],
        tile: int,
        overlap: int,
        normalization: Normalization,
        class_names: Sequence[str],
        batch_size: int,
        window: TrainingTile | None = None,
    ) -> ValidationGrid:
        window = window or PaddedTile(tile)
        tiles = tuple(window.validation_tiles(pairs, overlap))
        return cls(pairs, tiles, tile, normalization, tuple(class_names), batch_size, window)


@torch.no_grad()
def validate(
    model: nn.Module, grid: ValidationGrid, loss: Loss, device: str, autocast: torch.dtype | None
) -> tuple[float, Scores]:
    """Loss and scores of ``model`` (put in eval mode) on ``grid``, its forward passes under ``autocast``."""
    model.eval()
    confusion = Confusion(len(grid.class_names))
    loss_sum, weight = 0.0, 0
    for start in range(0, len(grid.tiles), grid.batch_size):
        window = grid.window or PaddedTile(grid.tile)
        raw, valid, labels = _read_group(grid.pairs, grid.tiles[start : start + grid.batch_size], window)
        x = normalised_on_device(raw, valid, grid.normalization, device)
        y = torch.from_numpy(labels).to(device)
        logits = forward_logits(model, x, autocast)
        labelled = int((y != IGNORE).sum())
        if labelled:
            loss_sum += float(loss(logits, y)) * labelled
            weight += labelled
        predicted = predicted_labels(logits)
        if (predicted == NODATA_UINT8).any():
            raise OptionError("the model's validation probabilities became NaN; lower lr")
        confusion.add(predicted, labels)
    return (loss_sum / weight if weight else math.nan), confusion.scores(grid.class_names)


def _read_group(
    pairs: Sequence[Pair], group: Sequence[GridTile], window: TrainingTile
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw input windows, their validity and the labels on the network's output of a group of tiles; labels
    outside a tile's own part are ``IGNORE``."""
    images, valid, labels = [], [], []
    for t in group:
        image, tile_valid, label, _ = window.read(pairs[t.pair], t.row, t.col, weighted=False)
        images.append(image)
        valid.append(tile_valid)
        labels.append(scored_labels(window, label, t))
    return np.stack(images), np.stack(valid), np.stack(labels)
