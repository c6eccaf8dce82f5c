"""Segmentation losses that skip ignored pixels: BCE, Dice and BCE + Dice (binary), CE and CE + Dice.

Labels are int64 class ids with ``IGNORE`` for pixels that must not count; optional class weights scale the
(binary) cross-entropy of each pixel by its true class, and optional per-pixel separation weights (the U-Net
paper's ``w0 · exp(−(d1 + d2)² / 2σ²)``) are added to them: the cross-entropy is then the mean of
``(w_c(x) + separation(x)) · loss(x)`` weighted by those weights. A binary model has one logit per pixel; a
multi-class model one per class. Dice is the soft Dice over the whole batch (one ratio per class, averaged),
with a smoothing of 1 so an empty class does not divide by zero; it takes no pixel weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from tiling.errors import OptionError

from .masks import IGNORE

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
SMOOTH = 1.0


def _no_pixels(logits: torch.Tensor) -> torch.Tensor:
    """A zero that still belongs to the graph (a batch with nothing labelled must not break backward)."""
    return logits.sum() * 0.0


def _weighted_mean(
    per_pixel: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, separation: torch.Tensor | None
) -> torch.Tensor:
    """The mean of ``per_pixel`` (the kept pixels' losses) weighted by class weight + separation weight."""
    if weights is None and separation is None:
        return per_pixel.mean()
    w = torch.ones_like(per_pixel) if weights is None else weights.to(per_pixel.device)[target]
    if separation is not None:
        w = w + separation
    return (per_pixel * w).sum() / w.sum()  # weighted mean, as cross_entropy(weight=…) takes it


def bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    separation: torch.Tensor | None = None,
) -> torch.Tensor:
    keep = labels != IGNORE
    if not keep.any():
        return _no_pixels(logits)
    target = labels[keep]
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0][keep].float(), target.float(), reduction="none")
    return _weighted_mean(per_pixel, target, weights, None if separation is None else separation[keep])


def binary_dice(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    separation: torch.Tensor | None = None,
) -> torch.Tensor:
    keep = (labels != IGNORE).float()
    probs = torch.sigmoid(logits[:, 0].float()) * keep
    target = (labels == 1).float() * keep
    return 1 - (2 * (probs * target).sum() + SMOOTH) / (probs.sum() + target.sum() + SMOOTH)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    separation: torch.Tensor | None = None,
) -> torch.Tensor:
    keep = labels != IGNORE
    if not keep.any():
        return _no_pixels(logits)
    if separation is None:
        weight = None if weights is None else weights.to(logits.device)
        return F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=IGNORE)
    per_pixel = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")[keep]
    return _weighted_mean(per_pixel, labels[keep], weights, separation[keep])


def multiclass_dice(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    separation: torch.Tensor | None = None,
) -> torch.Tensor:
    classes = logits.shape[1]
    keep = (labels != IGNORE).float()[:, None]
    probs = torch.softmax(logits.float(), dim=1) * keep
    target = F.one_hot(labels.clamp(min=0), classes).permute(0, 3, 1, 2).float() * keep
    dims = (0, 2, 3)
    dice = (2 * (probs * target).sum(dims) + SMOOTH) / (probs.sum(dims) + target.sum(dims) + SMOOTH)
    return 1 - dice.mean()


Part = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
LOSSES: dict[str, tuple[Part, ...]] = {
    "bce": (bce,),
    "dice": (binary_dice,),
    "bce+dice": (bce, binary_dice),
    "ce": (cross_entropy,),
    "ce+dice": (cross_entropy, multiclass_dice),
}


def make_loss(name: str, binary: bool, class_weights: Sequence[float] | None = None) -> Loss:
    """The named loss; binary names need a one-logit model, ``ce`` names a multi-class one. ``class_weights``
    (one per class id) weight the cross-entropy terms per pixel by its true class, as the class-balancing part
    of the U-Net paper's weight map; Dice is left unweighted."""
    if name not in LOSSES:
        raise OptionError(f"unknown loss {name!r} (expected one of {', '.join(LOSSES)})")
    if binary != name.startswith(("bce", "dice")):
        kind = "binary" if binary else "multi-class"
        raise OptionError(f"loss {name!r} does not fit a {kind} model")
    parts = LOSSES[name]
    weights = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)

    def loss(logits: torch.Tensor, labels: torch.Tensor, separation: torch.Tensor | None = None) -> torch.Tensor:
        total = torch.zeros((), device=logits.device)
        return sum((part(logits, labels, weights, separation) for part in parts), total)

    return loss
