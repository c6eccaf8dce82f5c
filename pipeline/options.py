"""Settings of a prediction run, with their defaults and checks (shared by the API, the CLI and configs)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from tiling.errors import OptionError
from tiling.windows import BLEND_KINDS
from tiling.writers.encode import OUTPUT_KINDS, PROBS_DTYPES
from tiling.writers.formats import FORMATS

from .devices import PRECISIONS
from .runner import TTA_MODES


@dataclass(frozen=True)
class PredictOptions:
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
    tta: str = "none"
    bands: tuple[int, ...] | None = None
    normalization: dict[str, Any] | None = None
    output_kind: str = "labels"
    probs_dtype: str = "float32"
    threshold: float = 0.5
    format: str | None = None
    overwrite: bool = False
    resume: bool = False
    scheduler: str | None = None
    cluster: str | None = None
    report: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        _positive_int(self.tile, "tile")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.chunk, "chunk")
        _positive_int(self.workers, "workers")
        _choice(self.blend, BLEND_KINDS, "blend")
        _choice(self.tta, TTA_MODES, "tta")
        _choice(self.output_kind, OUTPUT_KINDS, "output_kind")
        _choice(self.probs_dtype, PROBS_DTYPES, "probs_dtype")
        _choice(self.precision, tuple(PRECISIONS), "precision")
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

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def updated(self, **changes: Any) -> PredictOptions:
        """A copy with ``changes`` applied (unknown names are an error; ``None`` values are ignored)."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise OptionError(f"unknown option(s) {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _positive_int(value: Any, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive whole number, got {value!r}")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise OptionError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")
