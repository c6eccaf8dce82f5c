"""Validation metrics from a confusion matrix: Dice, IoU and pixel error per class, and overall."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .masks import IGNORE


class Confusion:
    """Counts of (truth, prediction) over labelled pixels."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.matrix = np.zeros((classes, classes), dtype=np.int64)

    def add(self, predicted: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> None:
        predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
        truth = np.asarray(truth, dtype=np.int64).reshape(-1)
        keep = truth != IGNORE
        flat = truth[keep] * self.classes + predicted[keep]
        self.matrix += np.bincount(flat, minlength=self.classes**2).reshape(self.classes, self.classes)

    def scores(self, class_names: Sequence[str]) -> Scores:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        fn = m.sum(axis=1) - tp
        fp = m.sum(axis=0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = 2 * tp / (2 * tp + fp + fn)
            iou = tp / (tp + fp + fn)
            error = fn / (tp + fn)  # share of the class's pixels labelled as something else
        total = m.sum()
        pixel_error = float((total - tp.sum()) / total) if total else float("nan")
        return Scores(tuple(class_names), dice, iou, error, pixel_error)


@dataclass(frozen=True)
class Scores:
    class_names: tuple[str, ...]
    dice: np.ndarray
    iou: np.ndarray
    error: np.ndarray
    pixel_error: float

    @property
    def mean_dice(self) -> float:
        """Mean Dice over the classes that occur in truth or prediction (NaN classes are left out)."""
        return float(np.nanmean(self.dice)) if np.isfinite(self.dice).any() else float("nan")

    @property
    def mean_iou(self) -> float:
        return float(np.nanmean(self.iou)) if np.isfinite(self.iou).any() else float("nan")

    @classmethod
    def from_row(cls, row: dict[str, Any], class_names: Sequence[str]) -> Scores:
        """Scores back from a metrics row (``as_row``), e.g. of a resumed run's best epoch."""

        def column(prefix: str) -> np.ndarray:
            return np.array([float(row[f"{prefix}_{name}"]) for name in class_names])

        return cls(tuple(class_names), column("dice"), column("iou"), column("error"), float(row["val_pixel_error"]))

    def as_row(self) -> dict[str, float]:
        row = {"val_dice": self.mean_dice, "val_iou": self.mean_iou, "val_pixel_error": self.pixel_error}
        for i, name in enumerate(self.class_names):
            row[f"dice_{name}"] = float(self.dice[i])
            row[f"iou_{name}"] = float(self.iou[i])
            row[f"error_{name}"] = float(self.error[i])
        return row
