"""Turning blended probabilities into what is written: float or uint8 probabilities, or class labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptionError

OUTPUT_KINDS = ("labels", "probs", "both")
PROBS_DTYPES = ("float32", "uint8")
#: Label and uint8-probability value written where the input was invalid.
NODATA_UINT8 = 255
#: uint8 probabilities are round(p · 254), so 255 stays free for nodata; the band scale is 1/254.
UINT8_PROB_SCALE = 254


@dataclass(frozen=True)
class OutputSpec:
    """What to write: ``kind`` labels/probs/both, the probability dtype and the binary threshold."""

    kind: str = "labels"
    probs_dtype: str = "float32"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise OptionError(f"unknown output kind {self.kind!r} (expected one of {', '.join(OUTPUT_KINDS)})")
        if self.probs_dtype not in PROBS_DTYPES:
            raise OptionError(f"unknown probability dtype {self.probs_dtype!r} (expected float32 or uint8)")
        if not 0.0 < self.threshold < 1.0:
            raise OptionError(f"threshold must be between 0 and 1, got {self.threshold}")

    @property
    def writes_labels(self) -> bool:
        return self.kind in ("labels", "both")

    @property
    def writes_probs(self) -> bool:
        return self.kind in ("probs", "both")

    @property
    def probs_nodata(self) -> float:
        return float("nan") if self.probs_dtype == "float32" else float(NODATA_UINT8)


def to_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Class per pixel (uint8): threshold for one channel (binary), argmax for several; NaN → nodata."""
    invalid = np.isnan(probs[0])
    if probs.shape[0] == 1:
        labels = (probs[0] >= threshold).astype(np.uint8)
    else:
        labels = np.argmax(np.nan_to_num(probs, nan=0.0), axis=0).astype(np.uint8)
    labels[invalid] = NODATA_UINT8
    return labels


def to_probs(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities as float32 (NaN where invalid) or uint8 round(p·254) (255 where invalid)."""
    if dtype == "float32":
        return probs
    scaled = np.nan_to_num(probs * UINT8_PROB_SCALE, nan=NODATA_UINT8)
    return np.rint(scaled).astype(np.uint8)
