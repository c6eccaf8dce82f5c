"""The checkpoint: one safetensors file with the weights and everything ``predict`` needs.

Safetensors holds only tensors and a string header, so loading never executes code from the file (unlike a
pickled ``torch.save``). The header carries a JSON *model card* (architecture, input bands, normalisation, class
names, suggested tile) and a SHA-256 of the weights, so a tampered or truncated file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tiling.errors import CheckpointError, OptionError
from tiling.instances import InstanceSpec
from tiling.normalize import Normalization
from tiling.writers.atomic import honour_umask

from .checkpoint_download import local_checkpoint
from .model import UNet, UNetConfig

FORMAT = "tilewise-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint says about its model, besides the weights."""

    model: UNetConfig
    normalization: Normalization
    class_names: tuple[str, ...]
    tile_size: int = 256
    bands: tuple[int, ...] | None = None
    band_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    #: How objects are found in the model's label map (None: each region of a class ≥ 1 is an object).
    instances: InstanceSpec | None = None
    #: The pixel size (µm) the model was trained at; a slide is then read at it unless told otherwise.
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        expected = 2 if self.model.classes == 1 else self.model.classes
        if len(self.class_names) != expected:
            raise OptionError(
                f"{len(self.class_names)} class names for a model with {self.model.classes} output channel(s) "
                f"(expected {expected}: a binary model names background and foreground)"
            )
        if self.normalization.bands != self.model.in_channels:
            raise OptionError(
                f"normalisation is for {self.normalization.bands} band(s), the model takes {self.model.in_channels}"
            )
        if self.bands is not None and len(self.bands) != self.model.in_channels:
            raise OptionError(f"{len(self.bands)} input bands listed for a {self.model.in_channels}-band model")
        self.model.check_tile(self.tile_size)
        classes = max(self.model.classes, 2)
        if (
            self.instances is not None
            and max((*self.instances.object_classes, *self.instances.growth_classes)) >= classes
        ):
            raise OptionError(f"the instance rule names a class the model's {classes} classes do not have")

    @property
    def instance_spec(self) -> InstanceSpec:
        """How objects are found in the label map: the card's rule, or every region of a class ≥ 1."""
        return self.instances or InstanceSpec.components(self.model.classes)

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model.to_mapping(),
                "normalization": self.normalization.to_mapping(),
                "class_names": list(self.class_names),
                "tile_size": self.tile_size,
                "bands": list(self.bands) if self.bands else None,
                "band_names": list(self.band_names),
                "info": self.info,
                "instances": self.instances.to_mapping() if self.instances else None,
                "pixel_size_um": self.pixel_size_um,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        spec = json.loads(text)
        model = UNetConfig.from_mapping(spec["model"])
        return cls(
            model=model,
            normalization=Normalization.from_mapping(spec["normalization"], model.in_channels),
            class_names=tuple(spec["class_names"]),
            tile_size=int(spec["tile_size"]),
            bands=tuple(spec["bands"]) if spec.get("bands") else None,
            band_names=tuple(spec.get("band_names", ())),
            info=dict(spec.get("info", {})),
            instances=InstanceSpec.from_mapping(spec["instances"]) if spec.get("instances") else None,
            pixel_size_um=float(spec["pixel_size_um"]) if spec.get("pixel_size_um") else None,
        )


@dataclass
class Checkpoint:
    model: UNet
    card: ModelCard


def _weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensors[name].shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], model: UNet, card: ModelCard) -> Path:
    """Write ``model``'s weights and ``card`` to ``path`` (atomically: a crash leaves no half file)."""
    if model.config != card.model:
        raise OptionError("the model card's architecture does not match the model")
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "card": card.to_json(),
        "weights_sha256": _weights_digest(tensors),
    }
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    honour_umask(partial)  # a colleague, or a cluster worker running as another user, must read the model
    os.replace(partial, path)
    return path


def weights_fingerprint(model: UNet) -> str:
    """The SHA-256 of a model's weights, as its checkpoint's header would state it."""
    return _weights_digest({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def checkpoint_fingerprint(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a checkpoint's weights, from its header (identifies the model a run used)."""
    return _read_header(local_checkpoint(path))[1]["weights_sha256"]


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """The model card of a checkpoint (a path or a URL), without loading its weights."""
    return _read_header(local_checkpoint(path))[0]


def _read_header(path: Path) -> tuple[ModelCard, dict[str, str]]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file ({exc}); tilewise never unpickles "
            "checkpoints, since that can run code"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a tilewise checkpoint (no model card)")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} uses checkpoint format version {metadata.get('format_version')}; this tilewise reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        card = ModelCard.from_json(metadata["card"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError, OptionError) as exc:
        raise CheckpointError(f"checkpoint {path} has a damaged model card: {exc}") from None
    return card, metadata


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (a path, or a URL downloaded once per process) into a ready-to-run model (eval mode) on
    ``device``."""
    path = local_checkpoint(path)
    card, metadata = _read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}") from None
    if _weights_digest(tensors) != metadata.get("weights_sha256"):
        raise CheckpointError(f"checkpoint {path} is damaged or was modified: its weights fail their checksum")
    model = UNet(card.model)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not match its architecture: {first_line}") from None
    return Checkpoint(model.to(device).eval(), card)
