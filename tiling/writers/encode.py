"""Turning blended probabilities into what is written: float or uint8 probabilities, or class labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptionError

#: What ``--output-kind`` names: a layer, ``both`` (labels and probabilities), or layers joined by commas.
LAYER_NAMES = ("labels", "instances", "probs")
OUTPUT_KINDS = ("labels", "probs", "both", "instances")
PROBS_DTYPES = ("float32", "uint8")
#: Label and uint8-probability value written where the input was invalid.
NODATA_UINT8 = 255
#: Instance id written where the input was invalid (0 is the background).
NODATA_UINT32 = 2**32 - 1
#: uint8 probabilities are round(p · 254), so 255 stays free for nodata; the band scale is 1/254.
UINT8_PROB_SCALE = 254
#: Rows encoded at a time, so an encoding's temporaries stay a strip of the chunk.
STRIP = 256


def parse_output_kind(kind: str) -> tuple[str, ...]:
    """The layers ``kind`` asks for, in the order files are named after them (labels, instances, probs)."""
    names = {"both": ("labels", "probs")}.get(kind, tuple(part.strip() for part in kind.split(",")))
    unknown = [n for n in names if n not in LAYER_NAMES]
    if unknown or not names:
        raise OptionError(
            f"unknown --output-kind {kind!r} (expected labels, probs, both, instances, or layers joined by commas "
            "such as labels,instances)"
        )
    return tuple(n for n in LAYER_NAMES if n in names)


@dataclass(frozen=True)
class OutputSpec:
    """What to write: the layers ``kind`` names, the probability dtype and the binary threshold."""

    kind: str = "labels"
    probs_dtype: str = "float32"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        parse_output_kind(self.kind)
        if self.probs_dtype not in PROBS_DTYPES:
            raise OptionError(f"unknown probability dtype {self.probs_dtype!r} (expected float32 or uint8)")
        if not 0.0 < self.threshold < 1.0:
            raise OptionError(f"threshold must be between 0 and 1, got {self.threshold}")

    @property
    def layers(self) -> tuple[str, ...]:
        return parse_output_kind(self.kind)

    @property
    def writes_labels(self) -> bool:
        return "labels" in self.layers

    @property
    def writes_probs(self) -> bool:
        return "probs" in self.layers

    @property
    def writes_instances(self) -> bool:
        return "instances" in self.layers

    @property
    def probs_nodata(self) -> float:
        return float("nan") if self.probs_dtype == "float32" else float(NODATA_UINT8)


def to_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Class per pixel (uint8): threshold for one channel (binary), argmax for several; NaN → nodata."""
    labels = np.empty(probs.shape[1:], np.uint8)
    for start in range(0, labels.shape[0], STRIP):
        block = probs[:, start : start + STRIP]
        if probs.shape[0] == 1:
            np.greater_equal(block[0], threshold, out=labels[start : start + STRIP], casting="unsafe")
        else:
            labels[start : start + STRIP] = np.argmax(block, axis=0)  # NaN (nodata) pixels are overwritten below
        labels[start : start + STRIP][np.isnan(block[0])] = NODATA_UINT8
    return labels


def to_confidence(probs: np.ndarray, threshold: float) -> np.ndarray:
    """The probability of each pixel's label as uint8 round(p · 254) (255 where invalid): the larger class
    probability, or for a binary model p or 1 − p, whichever the threshold chose."""
    confidence = np.empty(probs.shape[1:], np.uint8)
    for start in range(0, confidence.shape[0], STRIP):
        block = probs[:, start : start + STRIP]
        if probs.shape[0] == 1:
            p = block[0]
            top = np.where(p >= threshold, p, 1 - p)
        else:
            top = block.max(axis=0)
        confidence[start : start + STRIP] = np.rint(np.nan_to_num(top * UINT8_PROB_SCALE, nan=NODATA_UINT8))
    return confidence


def to_probs(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities as float32 (NaN where invalid) or uint8 round(p·254) (255 where invalid)."""
    if dtype == "float32":
        return probs
    scaled = np.nan_to_num(probs * UINT8_PROB_SCALE, nan=NODATA_UINT8)
    return np.rint(scaled).astype(np.uint8)
