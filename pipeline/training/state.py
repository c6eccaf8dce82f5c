"""The resume file beside a checkpoint: last weights, optimiser, schedule and scaler state after an epoch.

It is written with ``torch.save`` and read back with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers: a resume file cannot run code. The run's settings are stored with it, and a
resume with different settings (other data, model or schedule) is refused, naming what differs. The number of
epochs may grow: a finished run resumed with a larger ``epochs`` trains on (``EXTENDABLE``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tiling.errors import CheckpointError, OptionError

from .options import TrainOptions

FORMAT = "tilewise-train-state"
VERSION = 1
#: Options that may change between a run and its resumption (they do not change the result).
FREE_TO_CHANGE = {"resume", "overwrite", "progress", "plot", "device", "amp", "threads", "loader_workers", "out"}
#: Settings a resume may raise: the batches of epoch n do not depend on how many epochs follow.
EXTENDABLE = {"epochs"}


def fingerprint(opts: TrainOptions, images: list[str], masks: list[str], val: list[str]) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(opts).items() if k not in FREE_TO_CHANGE}
    settings.update(images=images, masks=masks, val=val)
    return json.loads(json.dumps(settings, default=list))


def save_state(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save({"format": FORMAT, "version": VERSION, **state}, partial)
    os.replace(partial, path)


def load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The state at ``path``, checked to belong to a run with the same ``settings`` (``epochs`` may have grown,
    but not below the epochs already trained)."""
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist (it is written after each epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or unsafe files
        first = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"cannot resume from {path}: not a readable tilewise training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"cannot resume from {path}: not a tilewise training state (version {VERSION})")
    previous = json.loads(state["settings"])
    changed = sorted(
        k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k) and k not in EXTENDABLE
    )
    if changed:
        raise OptionError(
            f"cannot resume: the run in {path} had different settings for {', '.join(changed)} "
            "(resume with the same settings, or start afresh with --overwrite)"
        )
    trained = int(state["epoch"])
    if int(settings["epochs"]) < trained:
        raise OptionError(
            f"cannot resume: the run in {path} has trained {trained} epochs already; epochs must be at least "
            f"{trained} (more extends it), got {settings['epochs']}"
        )
    return state


def planned_epochs(state: dict[str, Any]) -> int:
    """The epochs the run of ``state`` was planned for (its schedule spans them)."""
    return int(json.loads(state["settings"])["epochs"])
