"""torch's own forward pass: eager, channels-last on request, under autocast for bf16/fp16."""

from __future__ import annotations

import torch

from ..model import logits_to_probs


class TorchBackend:
    """The model as it is, on its device."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None, channels_last: bool):
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        enabled = self.dtype is not None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled):
            return logits_to_probs(self.model(x))
