"""Device and precision choices, checked before any work starts."""

from __future__ import annotations

import re

import torch

from tiling.errors import OptionError

from .options import PRECISION_NAMES

PRECISIONS = dict(zip(PRECISION_NAMES, (None, torch.bfloat16, torch.float16), strict=True))


def resolve_device(name: str, here: bool = True) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda``/``cuda:N`` must exist.

    With ``here=False`` (the model runs on cluster workers, not in this process) the name is only checked for
    syntax: ``auto`` stays ``auto`` and each worker resolves it for itself.
    """
    name = name.strip().lower()
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name not in ("auto", "cpu") and match is None:
        raise OptionError(f"unknown device {name!r} (expected auto, cpu, cuda or cuda:N)")
    if not here:
        return f"cuda:{int(match.group(1) or 0)}" if match else name
    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    assert match is not None
    if not torch.cuda.is_available():
        raise OptionError(f"device {name!r} requested but no CUDA GPU is available (use --device cpu)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise OptionError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return f"cuda:{index}"


def check_precision(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r} (expected fp32, bf16 or fp16)")
    if precision == "fp16" and device == "cpu":
        raise OptionError("fp16 autocast is for GPUs; on the CPU use --precision bf16 or fp32")
