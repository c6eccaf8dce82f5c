"""The training record: one CSV row per epoch, and a PNG of the learning curves drawn from it."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path


def write_metrics(path: Path, rows: Sequence[dict[str, float | int | str]]) -> None:
    """Rewrite the CSV with every epoch so far (small; a resumed run keeps its earlier rows)."""
    if not rows:
        return
    columns = list(rows[0])
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k, "")) for k in columns})
    os.replace(partial, path)


def read_metrics(path: Path) -> list[dict[str, float | int | str]]:
    """The rows of a metrics CSV written by ``write_metrics`` (numbers parsed back)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(value: float | int | str) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _number(text: str) -> float | int | str:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def plot_curves(path: Path, rows: Sequence[dict[str, float | int | str]], class_names: Sequence[str]) -> None:
    """Loss (train and validation) and validation Dice/IoU per epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key, "") != "" else math.nan for r in rows]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=90)
    left.plot(epochs, series("train_loss"), marker=".", label="train loss")
    left.plot(epochs, series("val_loss"), marker=".", label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    left.grid(alpha=0.3)
    right.plot(epochs, series("val_dice"), marker=".", linewidth=2, label="mean Dice")
    right.plot(epochs, series("val_iou"), marker=".", linewidth=2, label="mean IoU")
    for name in class_names:
        right.plot(epochs, series(f"iou_{name}"), linewidth=0.8, alpha=0.7, label=f"IoU {name}")
    right.set_xlabel("epoch")
    right.set_ylabel("validation score")
    right.set_ylim(0, 1)
    right.legend(fontsize="small", ncol=2)
    right.grid(alpha=0.3)
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    fig.savefig(partial)
    plt.close(fig)
    os.replace(partial, path)
