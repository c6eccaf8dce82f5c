"""The forward pass that validation shares with prediction: raw tiles in, logits, probabilities and labels out.

Prediction (``ModelRunner.probabilities``) sends raw tiles to the device, normalises them there as
``(x - mean) · (1 / std)`` in float32 and zeroes invalid pixels, runs the model and turns its logits into
probabilities with ``logits_to_probs``; the label writer (``to_labels``) thresholds a binary model's
probability at 0.5 by default and takes the argmax of several. Validation does the same through these
functions, so the scores it reports are those of the labels ``predict`` would write with its default threshold.

Training's forward passes run under autocast where ``--amp`` asks (``training_autocast``): float16 on CUDA,
bfloat16 on a CPU; the loss is computed on float32 logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tiling.normalize import Normalization
from tiling.writers.encode import to_labels

from ..devices import native_bf16
from ..model import logits_to_probs

#: ``predict``'s default threshold on a binary model's probability.
LABEL_THRESHOLD = 0.5


def normalised_on_device(
    raw: np.ndarray, valid: np.ndarray, normalization: Normalization, device: str | torch.device
) -> torch.Tensor:
    """Raw tiles (batch, bands, T, T) as a normalised float32 batch on ``device``; pixels where ``valid``
    (batch, T, T) is False are 0."""
    mean = torch.tensor(normalization.mean, dtype=torch.float32, device=device)[None, :, None, None]
    inv_std = (1.0 / torch.tensor(normalization.std, dtype=torch.float32, device=device))[None, :, None, None]
    x = torch.from_numpy(raw).to(device).float()
    x = (x - mean) * inv_std
    x *= torch.from_numpy(valid).to(device)[:, None]
    return x


#: The precision name of each autocast dtype (float32: none).
AUTOCAST_NAMES: dict[torch.dtype | None, str] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def training_autocast(mode: str, device: str) -> torch.dtype | None:
    """The autocast dtype of training for ``--amp`` ``mode`` on ``device`` (None: float32).

    On CUDA ``auto`` and ``on`` are float16 (with the grad scaler). On a CPU ``auto`` is bfloat16 where the CPU
    computes it natively (``devices.native_bf16``: AVX512-BF16, AMX) and float32 elsewhere, where emulated bf16
    is slower than float32; ``on`` is bfloat16 on any CPU. ``off`` is float32 everywhere.
    """
    if mode == "off":
        return None
    if device.startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if mode == "on" or native_bf16() else None


def forward_logits(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None) -> torch.Tensor:
    """float32 logits of a batch, the forward pass under ``autocast`` on ``x``'s device when it is given."""
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        logits = model(x)
    return logits.float()


def predicted_labels(logits: torch.Tensor) -> np.ndarray:
    """Class per pixel (batch, T, T) as ``predict`` writes it: ``to_labels`` of ``logits_to_probs``."""
    probs = logits_to_probs(logits).cpu().numpy()
    return np.stack([to_labels(p, LABEL_THRESHOLD) for p in probs])
