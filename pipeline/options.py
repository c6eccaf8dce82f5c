"""Settings of a prediction run, with their defaults and checks (shared by the API, the CLI and configs)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from tiling.errors import OptionError
from tiling.masking import TISSUE_CHANNELS
from tiling.windows import BLEND_KINDS
from tiling.writers import FORMATS, PROBS_DTYPES
from tiling.writers.encode import parse_output_kind

#: Kept free of torch (the CLI checks options before it loads the model); ``devices.PRECISIONS`` maps them to dtypes.
PRECISION_NAMES = ("fp32", "bf16", "fp16")
TTA_MODES = ("none", "flips")
#: Inference engines (``pipeline.backends``): torch is always installed; ``auto`` times the installed ones.
BACKEND_NAMES = ("torch", "auto", "onnxruntime", "openvino")
VECTOR_STYLES = ("plain", "qupath")

_Options = TypeVar("_Options", bound="UpdatableOptions")


class UpdatableOptions:
    """``names`` and ``updated`` for a frozen dataclass of options (predict's, train's)."""

    #: What an unknown name is called in its error ("option", "training option").
    option_word = "option"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def updated(self: _Options, **changes: Any) -> _Options:
        """A copy with ``changes`` applied (unknown names are an error; ``None`` values are ignored)."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            close = [difflib.get_close_matches(name, self.names(), n=1) for name in unknown]
            hints = [f"{name} (did you mean {c[0]}?)" if c else name for name, c in zip(unknown, close, strict=True)]
            raise OptionError(f"unknown {self.option_word}(s) {', '.join(hints)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]


@dataclass(frozen=True)
class PredictOptions(UpdatableOptions):
    """Everything ``predict`` can be told; ``None`` means "from the checkpoint" or "planned"."""

    tile: int | None = None
    overlap: float | int = 0.25
    blend: str = "gaussian"
    sigma: float = 0.125
    batch_size: int | None = None
    chunk: int | None = None
    workers: int | None = None
    memory_limit: int | float | str | None = None
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool | None = None
    #: The engine that runs the model: torch, onnxruntime or openvino (extras), or auto (the fastest installed).
    backend: str = "torch"
    tta: str = "none"
    bands: tuple[int, ...] | None = None
    normalization: dict[str, Any] | None = None
    output_kind: str = "labels"
    probs_dtype: str = "float32"
    threshold: float = 0.5
    format: str | None = None
    overwrite: bool = False
    resume: bool = False
    work_dir: str | None = None
    #: Local folder an output at a URL is assembled in before its upload (default: the system's temporary folder).
    scratch_dir: str | None = None
    scheduler: str | None = None
    cluster: str | None = None
    report: str | None = None
    progress: bool = False
    # Slides: which resolution is read (a pyramid level, or µm per pixel resampled from the closest finer level).
    level: int | None = None
    mpp: float | None = None
    mpp_tolerance: float = 0.05
    #: The input's pixel size (µm), for an input that states none (PNG, plain TIFF).
    input_mpp: float | None = None
    # Valid-area mask: "tissue", "nodata", a mask raster's path, or None/"none"; tiles below min_valid are skipped.
    mask: str | None = None
    mask_scale: int | None = None
    tissue_channel: str = "saturation"
    tissue_threshold: float | None = None
    min_valid: float = 0.0
    # Products made from the written labels: a PNG preview and polygons (GeoPackage or GeoJSON).
    preview: str | None = None
    preview_size: int = 1024
    vector: str | None = None
    #: Polygons as plain GIS features, or as QuPath detections (level-0 pixel coordinates, measurements).
    vector_style: str = "plain"
    #: The object table (one row per object: class, area, centroid, bounding box, mean probability).
    objects: str | None = None
    #: Objects smaller than this (pixels of the grid the model reads) are dropped (default: the card's).
    min_object_area: int | None = None
    min_area: float = 0.0
    vector_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _positive_int(self.tile, "tile")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.chunk, "chunk")
        _positive_int(self.workers, "workers")
        _choice(self.blend, BLEND_KINDS, "blend")
        _choice(self.tta, TTA_MODES, "tta")
        parse_output_kind(self.output_kind)
        _choice(self.probs_dtype, PROBS_DTYPES, "probs_dtype")
        _choice(self.precision, PRECISION_NAMES, "precision")
        _choice(self.backend, BACKEND_NAMES, "backend")
        if self.format is not None:
            _choice(self.format, FORMATS, "format")
        if not isinstance(self.sigma, (int, float)) or not self.sigma > 0:
            raise OptionError(f"sigma must be a positive fraction of the tile, got {self.sigma!r}")
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 1:
            raise OptionError(f"threshold must be between 0 and 1, got {self.threshold!r}")
        if self.bands is not None:
            if isinstance(self.bands, (str, int)) or not all(isinstance(b, int) for b in self.bands):
                raise OptionError(f"bands must be a list of band numbers, got {self.bands!r}")
            object.__setattr__(self, "bands", tuple(self.bands))
        if self.normalization is not None and not isinstance(self.normalization, dict):
            raise OptionError(f"normalization must be a mapping (mean/std or scale), got {self.normalization!r}")
        self._check_slide_options()

    def _check_slide_options(self) -> None:
        if self.level is not None and (
            isinstance(self.level, bool) or not isinstance(self.level, int) or self.level < 0
        ):
            raise OptionError(f"level must be a pyramid level number (0 = full resolution), got {self.level!r}")
        _positive_number(self.mpp, "mpp", "µm per pixel")
        _positive_number(self.input_mpp, "input_mpp", "µm per pixel")
        if self.level is not None and self.mpp is not None:
            raise OptionError("give either level or mpp, not both")
        _fraction(self.mpp_tolerance, "mpp_tolerance", upper_open=True)
        for name in ("mask", "preview", "vector", "objects"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if self.mask is not None and not isinstance(self.mask, str):
            raise OptionError(f"mask must be tissue, nodata, none or a raster's path, got {self.mask!r}")
        _positive_int(self.mask_scale, "mask_scale")
        _choice(self.tissue_channel, TISSUE_CHANNELS, "tissue_channel")
        if self.tissue_threshold is not None:
            _fraction(self.tissue_threshold, "tissue_threshold")
        _fraction(self.min_valid, "min_valid")
        _suffix(self.preview, "preview", (".png",))
        _positive_int(self.preview_size, "preview_size")
        _suffix(self.vector, "vector", (".gpkg", ".geojson", ".json"))
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, (int, float)) or self.min_area < 0:
            raise OptionError(f"min_area must be a non-negative area (in the output's units²), got {self.min_area!r}")
        if self.vector_classes is not None:
            classes = self.vector_classes
            if isinstance(classes, (str, int)) or not all(isinstance(c, int) and 0 <= c < 255 for c in classes):
                raise OptionError(f"vector_classes must be a list of class numbers, got {classes!r}")
            object.__setattr__(self, "vector_classes", tuple(classes))
        layers = parse_output_kind(self.output_kind)
        if self.vector and not {"labels", "instances"} & set(layers):
            raise OptionError(
                "polygons are made from the label or instance map: add labels or instances to --output-kind"
            )
        _choice(self.vector_style, VECTOR_STYLES, "vector_style")
        _suffix(self.objects, "objects", (".csv", ".parquet"))
        if self.min_object_area is not None and (
            isinstance(self.min_object_area, bool)
            or not isinstance(self.min_object_area, int)
            or self.min_object_area < 0
        ):
            raise OptionError(f"min_object_area must be a whole number of pixels ≥ 0, got {self.min_object_area!r}")
        if self.objects and "instances" not in layers:
            raise OptionError("the object table is made from the instances: add instances to --output-kind")


def _positive_int(value: Any, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive whole number, got {value!r}")


def _positive_number(value: Any, name: str, unit: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise OptionError(f"{name} must be a positive number of {unit}, got {value!r}")


def _fraction(value: Any, name: str, upper_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1
    if not ok or (upper_open and value == 1):
        raise OptionError(f"{name} must be a fraction between 0 and 1, got {value!r}")


def _suffix(value: Any, name: str, suffixes: tuple[str, ...]) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.lower().endswith(suffixes):
        raise OptionError(f"{name} must be a file name ending in {' or '.join(suffixes)}, got {value!r}")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise OptionError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")
