"""The model and what updates it: AdamW, the learning-rate schedule and the grad scaler (float16 autocast only).

``build_learner`` is the one place they are made, for a fresh run and a resumed one alike (a resumed run then
loads their state). The model is initialised from the run's seed, so a fresh run starts from the same weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..model import UNet, UNetConfig, build_model
from .forward import forward_logits
from .losses import Loss
from .options import TrainOptions


@dataclass
class Learner:
    model: UNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    #: The forward passes' autocast dtype (``forward.training_autocast``); None: float32.
    autocast: torch.dtype | None

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, loss: Loss, weights: torch.Tensor | None = None
    ) -> float:
        """One optimiser and schedule step on a batch (with each pixel's separation ``weights``); its loss."""
        value = loss(forward_logits(self.model, images, self.autocast), labels, weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(value).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(value.detach())

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], stretched_after: int | None = None) -> None:
        """Continue from ``state``. ``stretched_after``: the run now has more epochs than its schedule was made
        for, so this learner's schedule (over the new length) is kept, advanced past the steps already taken."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if stretched_after is None:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            with warnings.catch_warnings():  # steps taken without an optimiser step, on purpose
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(stretched_after):
                    self.scheduler.step()
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


def build_learner(opts: TrainOptions, config: UNetConfig, device: str, autocast: torch.dtype | None) -> Learner:
    """A freshly initialised model on ``device`` with its optimiser, schedule (over the whole run) and scaler
    (which scales the loss only under float16 autocast: bfloat16 has float32's range)."""
    torch.manual_seed(opts.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    total = opts.epochs * opts.steps_per_epoch
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if opts.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, total_steps=total)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=opts.lr / 100)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast == torch.float16)
    return Learner(model, optimizer, scheduler, scaler, autocast)
