"""Scores of predicted objects against true ones: AJI, object F1 at IoU ≥ 0.5, Dice and count error.

- **AJI** (Aggregated Jaccard Index, Kumar et al. 2017): each true object is paired with the predicted object of
  highest IoU; AJI = Σ |G ∩ S| / (Σ |G ∪ S| + Σ |S unpaired|) over the pairs, the predicted objects no true
  object chose adding their whole area to the denominator. It punishes merges and splits alike.
- **F1 at IoU ≥ 0.5**: a true and a predicted object match when their IoU is above 0.5 (such a match is unique);
  F1 = 2 TP / (2 TP + FP + FN).
- **Dice** of the foreground (any object against background), and the **count error** |N_pred − N_true| / N_true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ObjectScores:
    aji: float
    f1: float
    precision: float
    recall: float
    dice: float
    true_count: int
    predicted_count: int

    @property
    def count_error(self) -> float:
        return abs(self.predicted_count - self.true_count) / max(self.true_count, 1)


def _overlaps(true: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (true id, predicted id) that share pixels, with the number they share (both ids > 0)."""
    both = (true > 0) & (predicted > 0)
    pairs = np.stack([true[both].astype(np.int64), predicted[both].astype(np.int64)])
    if pairs.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    unique, counts = np.unique(pairs, axis=1, return_counts=True)
    return unique[0], unique[1], counts


def score_objects(true: np.ndarray, predicted: np.ndarray) -> ObjectScores:
    """Scores of the instance map ``predicted`` against ``true`` (0 = background, one id per object)."""
    true_ids, true_area = np.unique(true[true > 0], return_counts=True)
    pred_ids, pred_area = np.unique(predicted[predicted > 0], return_counts=True)
    area_t = dict(zip(true_ids.tolist(), true_area.tolist(), strict=True))
    area_p = dict(zip(pred_ids.tolist(), pred_area.tolist(), strict=True))
    t_of, p_of, shared = _overlaps(true, predicted)
    union = np.array([area_t[t] + area_p[p] - s for t, p, s in zip(t_of, p_of, shared, strict=True)], np.int64)
    iou = shared / np.maximum(union, 1)

    # AJI: each true object takes its best predicted object (by IoU).
    best: dict[int, tuple[float, int, int, int]] = {}
    for t, p, s, u, v in zip(t_of.tolist(), p_of.tolist(), shared.tolist(), union.tolist(), iou.tolist(), strict=True):
        if t not in best or v > best[t][0]:
            best[t] = (v, p, s, u)
    intersection = sum(b[2] for b in best.values())
    union_total = sum(b[3] for b in best.values()) + sum(area_t[t] for t in area_t if t not in best)
    used = {b[1] for b in best.values()}
    union_total += sum(area for p, area in area_p.items() if p not in used)
    aji = intersection / union_total if union_total else 1.0

    matched = int((iou > 0.5).sum())
    fp, fn = len(area_p) - matched, len(area_t) - matched
    f1 = 2 * matched / (2 * matched + fp + fn) if (matched + fp + fn) else 1.0
    fg_t, fg_p = true > 0, predicted > 0
    dice = 2 * (fg_t & fg_p).sum() / max(fg_t.sum() + fg_p.sum(), 1)
    return ObjectScores(
        aji=float(aji),
        f1=float(f1),
        precision=matched / max(len(area_p), 1),
        recall=matched / max(len(area_t), 1),
        dice=float(dice),
        true_count=len(area_t),
        predicted_count=len(area_p),
    )
