"""Settings of a training run, with their defaults and checks (shared by the API, the CLI and configs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiling.errors import OptionError

from ..config import load_config
from ..model import PADDING, UPSAMPLING
from ..options import UpdatableOptions

MASK_ENCODINGS = ("ids", "binary", "palette", "instances")
#: The class an instance-mask model learns between touching objects (added after the object classes).
BOUNDARY = "boundary"
BINARY_LOSSES = ("bce", "dice", "bce+dice")
MULTICLASS_LOSSES = ("ce", "ce+dice")
SCHEDULES = ("cosine", "onecycle")
AMP_MODES = ("auto", "on", "off")
#: Default number of processes building training batches beside the training step (0: the step's process builds
#: them between steps). Measured on a two-core machine with the sample_data and ISBI configs: none was as fast as
#: one worker and cheaper in CPU time, and two were the slowest. The step's torch threads already keep both
#: cores busy, a batch costs little next to a step, and each worker first pays a process start (importing torch)
#: and then competes with the step for the same cores. On a machine with cores to spare (a GPU host), raise it.
LOADER_WORKERS = 0


@dataclass(frozen=True)
class TrainOptions(UpdatableOptions):
    """Everything ``train`` can be told.

    Data: ``images``/``masks`` (and ``val_images``/``val_masks``) are lists of raster paths paired in order;
    entries may hold globs and numeric ranges (``image/{0..24}.png``). ``class_names`` has two names for a
    binary model (background first) or one per class. Masks hold class ids (``ids``), 0/255 (``binary``,
    thresholded at 128) or colours (``palette``: ``{class name: "#RRGGBB"}``); ``ignore_value`` is a raw mask
    value (or a colour for palettes) whose pixels add nothing to the loss or the metrics.
    """

    option_word = "training option"

    images: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()
    val_images: tuple[str, ...] = ()
    val_masks: tuple[str, ...] = ()
    out: str | None = None
    bands: tuple[int, ...] | None = None
    class_names: tuple[str, ...] = ("background", "foreground")
    mask_encoding: str = "ids"
    palette: dict[str, Any] | None = None
    ignore_value: int | str | None = None
    # objects: instance masks (one id per object), the boundary class between them, the paper's weight map
    instance_classes: str | None = None  # a CSV of object id → class name (default: every object the first class)
    boundary_width: int = 2
    min_object_area: int = 0  # objects smaller than this (pixels) are fragments: predict drops them
    weight_map: bool | None = None  # the separation weights (default: on for instance masks)
    w0: float = 10.0
    weight_sigma: float = 5.0
    mpp: float | None = None  # the training images' pixel size (µm), recorded in the model card
    about: dict[str, str] | None = None  # what the card says of the data and its licence ({"data": …, "licence": …})
    # model
    base_width: int = 16
    depth: int = 4
    upsampling: str = "transpose"
    #: "same" or "valid" (the paper's unpadded convs; ``tile`` is then the output tile, read with its context).
    padding: str = "same"
    batch_norm: bool = True
    # sampling
    tile: int = 256
    batch_size: int = 4
    epochs: int = 20
    steps_per_epoch: int = 50
    oversample: float = 0.0
    val_overlap: float | int = 0.25
    # augmentation
    flips: bool = True
    rotations: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    colour: float = 0.0  # per-band jitter (stain and scanner colour shifts)
    elastic: bool = False
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    # optimisation
    loss: str | None = None
    class_weights: str | tuple[float, ...] | None = None  # "balanced" or one weight per class (cross-entropy)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    threads: int | None = None
    loader_workers: int = LOADER_WORKERS  # processes building batches (0: in the training process)
    # output
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    plot: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "masks", "val_images", "val_masks", "class_names"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise OptionError(f"{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.bands is not None:
            if isinstance(self.bands, (str, int)) or not all(isinstance(b, int) for b in self.bands):
                raise OptionError(f"bands must be a list of band numbers, got {self.bands!r}")
            object.__setattr__(self, "bands", tuple(self.bands))
        for name in ("base_width", "depth", "tile", "batch_size", "epochs", "steps_per_epoch", "elastic_grid"):
            _positive_int(getattr(self, name), name)
        self._check_objects()
        if self.threads is not None:
            _positive_int(self.threads, "threads")
        if isinstance(self.loader_workers, bool) or not isinstance(self.loader_workers, int) or self.loader_workers < 0:
            raise OptionError(f"loader_workers must be a whole number ≥ 0, got {self.loader_workers!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise OptionError(f"seed must be a whole number ≥ 0, got {self.seed!r}")
        _choice(self.mask_encoding, MASK_ENCODINGS, "mask_encoding")
        _choice(self.upsampling, UPSAMPLING, "upsampling")
        _choice(self.padding, PADDING, "padding")
        _choice(self.schedule, SCHEDULES, "schedule")
        if isinstance(self.amp, bool):  # YAML reads an unquoted on/off as a boolean
            object.__setattr__(self, "amp", "on" if self.amp else "off")
        _choice(self.amp, AMP_MODES, "amp")
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise OptionError(f"class_names needs at least two distinct names, got {list(self.class_names)}")
        if self.loss is not None:
            allowed = BINARY_LOSSES if self.binary else MULTICLASS_LOSSES
            kind = "binary" if self.binary else f"{len(self.class_names)}-class"
            _choice(self.loss, allowed, f"loss for a {kind} model")
        for name in ("brightness", "contrast", "colour", "elastic_sigma", "weight_decay"):
            _non_negative(getattr(self, name), name)
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise OptionError(f"lr must be positive, got {self.lr!r}")
        if not isinstance(self.oversample, (int, float)) or not 0 <= self.oversample <= 1:
            raise OptionError(f"oversample must be a fraction between 0 and 1, got {self.oversample!r}")
        if self.class_weights is not None and self.class_weights != "balanced":
            weights = self.class_weights
            if (
                isinstance(weights, str)
                or not isinstance(weights, (list, tuple))
                or len(weights) != len(self.class_names)
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights)
            ):
                raise OptionError(
                    f"class_weights must be 'balanced' or {len(self.class_names)} positive numbers (one per class), "
                    f"got {weights!r}"
                )
            object.__setattr__(self, "class_weights", tuple(float(w) for w in weights))
        if self.mask_encoding == "palette" and not self.palette:
            raise OptionError(
                "mask_encoding palette needs a palette, which a config's train: section sets, e.g. palette: "
                "{background: '#000000', building: '#FF0000'}"
            )
        if self.about is not None and (
            not isinstance(self.about, dict) or not all(isinstance(v, str) for v in self.about.values())
        ):
            raise OptionError(f"about must map names to text (data, licence), got {self.about!r}")
        if self.palette is not None and not isinstance(self.palette, dict):
            raise OptionError(f"palette must map class names to colours, got {self.palette!r}")

    def _check_objects(self) -> None:
        _positive_int(self.boundary_width, "boundary_width")
        if (
            isinstance(self.min_object_area, bool)
            or not isinstance(self.min_object_area, int)
            or self.min_object_area < 0
        ):
            raise OptionError(f"min_object_area must be a whole number of pixels ≥ 0, got {self.min_object_area!r}")
        for name in ("w0", "weight_sigma"):
            _non_negative(getattr(self, name), name)
        if not self.weight_sigma > 0:
            raise OptionError(f"weight_sigma must be a positive number of pixels, got {self.weight_sigma!r}")
        if self.mpp is not None and (
            isinstance(self.mpp, bool) or not isinstance(self.mpp, (int, float)) or self.mpp <= 0
        ):
            raise OptionError(f"mpp must be a positive number of µm per pixel, got {self.mpp!r}")
        if self.mask_encoding != "instances":
            if self.instance_classes is not None:
                raise OptionError("instance_classes are for instance masks: set --mask-encoding instances")
            return
        if BOUNDARY not in self.class_names:  # the model also learns the boundary between touching objects
            object.__setattr__(self, "class_names", (*self.class_names, BOUNDARY))
        elif self.class_names[-1] != BOUNDARY:
            raise OptionError(f"with instance masks the class {BOUNDARY!r} comes last, got {list(self.class_names)}")

    @property
    def weighted(self) -> bool:
        """Whether the loss weighs each pixel by the paper's weight map."""
        return (self.mask_encoding == "instances") if self.weight_map is None else bool(self.weight_map)

    @property
    def binary(self) -> bool:
        """Two classes train a one-logit (sigmoid) model."""
        return len(self.class_names) == 2

    @property
    def loss_name(self) -> str:
        return self.loss or ("bce+dice" if self.binary else "ce+dice")


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive whole number, got {value!r}")


def _non_negative(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise OptionError(f"{name} must be a number ≥ 0, got {value!r}")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise OptionError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")


#: Options holding input paths: in a config they are relative to the config file's folder.
PATH_OPTIONS = ("images", "masks", "val_images", "val_masks")


def options_from_config(path: str | os.PathLike[str]) -> TrainOptions:
    """The ``train:`` section of a YAML config as options; data paths are taken relative to the config's folder
    (``out`` stays relative to the current directory). An unknown key is an error naming it."""
    values = load_config(path, "train", TrainOptions.names())
    base = Path(path).resolve().parent
    for key in PATH_OPTIONS:
        if key in values:
            entries = [values[key]] if isinstance(values[key], str) else values[key]
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise OptionError(f"{key} in config {path} must be a path or a list of paths")
            values[key] = tuple(e if os.path.isabs(os.path.expanduser(e)) else str(base / e) for e in entries)
    for key in ("class_names", "bands", "class_weights"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return TrainOptions().updated(**values)
