"""Per-band normalisation of raw pixels into the model's input range."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import OptionError


@dataclass(frozen=True)
class Normalization:
    """``(x - mean) / std`` per band, applied in float32."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise OptionError(f"normalisation has {len(self.mean)} means but {len(self.std)} stds")
        if any(not s > 0 for s in self.std):
            raise OptionError(f"normalisation std must be positive, got {list(self.std)}")

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any], bands: int) -> Normalization:
        """From ``{"mean": [...], "std": [...]}`` or ``{"scale": s}`` (x · s, e.g. 1/255); a single number
        is used for every band."""
        unknown = set(spec) - {"mean", "std", "scale"}
        if unknown:
            raise OptionError(f"unknown normalisation key(s) {sorted(unknown)} (use mean/std or scale)")
        if "scale" in spec:
            if "mean" in spec or "std" in spec:
                raise OptionError("normalisation takes either scale or mean/std, not both")
            scale = float(spec["scale"])
            if not scale > 0:
                raise OptionError(f"normalisation scale must be positive, got {scale}")
            return cls((0.0,) * bands, (1.0 / scale,) * bands)
        if "mean" not in spec or "std" not in spec:
            raise OptionError("normalisation needs both mean and std (or scale)")
        return cls(_per_band(spec["mean"], bands, "mean"), _per_band(spec["std"], bands, "std"))

    def to_mapping(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @property
    def bands(self) -> int:
        return len(self.mean)

    def apply(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of ``data`` (bands, rows, cols); invalid pixels become 0."""
        if data.shape[0] != self.bands:
            raise OptionError(f"normalisation is for {self.bands} band(s) but the data has {data.shape[0]}")
        out = data.astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        inv_std = (1.0 / np.asarray(self.std, dtype=np.float32))[:, None, None]
        out -= mean
        out *= inv_std
        out[:, ~valid] = 0.0
        return out


def _per_band(value: float | Sequence[float], bands: int, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * bands
    values = tuple(float(v) for v in value)
    if len(values) != bands:
        raise OptionError(f"normalisation {name} has {len(values)} values for {bands} band(s)")
    return values
