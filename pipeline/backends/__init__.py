"""Inference engines: one small class per engine, behind the one ``Backend`` protocol the runner calls.

    backend = make_backend("openvino", model, card, weights, precision)
    probs = backend.probabilities(x)   # normalised tiles (batch, bands, T, T) float32 → probabilities float32

torch is always there; ``onnxruntime`` and ``openvino`` are optional extras (``tilewise[onnx]``,
``tilewise[openvino]``). They run a model converted once per process (through ONNX) for the run's tile shape and
cached on disk (``conversion``), so a second run starts at once. ``auto`` keeps torch on a GPU and on a CPU
times the installed engines on the run's first batch (``chooser``).
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import torch

from tiling.errors import OptionError

from ..options import BACKEND_NAMES

#: Engines besides torch: the module that must be importable, and the extra that installs it.
OPTIONAL: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
}
#: The precisions each engine runs on a CPU (onnxruntime's CPU kernels have no bf16 convolutions).
CPU_PRECISIONS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


class Backend(Protocol):
    """Runs a model's forward pass and its softmax/sigmoid on normalised tiles."""

    name: str

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (batch, classes, T, T) float32 of normalised tiles ``x`` (batch, bands, T, T) float32."""
        ...


def installed(name: str) -> bool:
    """Whether engine ``name`` can be imported here (torch always can)."""
    return name == "torch" or importlib.util.find_spec(OPTIONAL[name][0]) is not None


def check_backend(name: str, device: str, precision: str) -> None:
    """Refuse an engine that is unknown, not installed, or cannot run ``precision`` on ``device`` (one line)."""
    if name not in BACKEND_NAMES:
        raise OptionError(f"unknown backend {name!r} (expected one of {', '.join(BACKEND_NAMES)})")
    if name in ("auto", "torch"):
        return
    if not installed(name):
        raise OptionError(f"backend {name} is not installed: pip install 'tilewise[{OPTIONAL[name][1]}]'")
    if device.startswith("cuda"):
        raise OptionError(f"backend {name} runs on CPUs: use --device cpu, or --backend torch on a GPU")
    if precision not in CPU_PRECISIONS[name]:
        raise OptionError(
            f"backend {name} runs {' or '.join(CPU_PRECISIONS[name])} on a CPU, not {precision}: "
            "use --backend openvino or torch for bf16"
        )


def candidates(device: str, precision: str) -> list[str]:
    """The engines ``auto`` chooses among on ``device``: torch on a GPU; on a CPU every installed engine that
    runs ``precision``."""
    if device != "cpu":
        return ["torch"]
    return [n for n in CPU_PRECISIONS if precision in CPU_PRECISIONS[n] and installed(n)]
