"""Output layers: the label map and the probability bands, with their dtype, nodata and band names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encode import NODATA_UINT8, OutputSpec, to_labels, to_probs


@dataclass(frozen=True)
class Layer:
    """One output raster: ``name`` is "labels" or "probs"."""

    name: str
    count: int
    dtype: str
    nodata: float
    band_names: tuple[str, ...]
    threshold: float = 0.5

    @property
    def is_labels(self) -> bool:
        return self.name == "labels"

    def shape(self, height: int, width: int) -> tuple[int, ...]:
        """The layer's array shape: (y, x) for the label map, (band, y, x) for probabilities."""
        return (height, width) if self.is_labels else (self.count, height, width)

    def nbytes(self, height: int, width: int) -> int:
        """Uncompressed bytes of the layer over ``height`` × ``width`` pixels."""
        return self.count * height * width * np.dtype(self.dtype).itemsize

    def encode(self, probs: np.ndarray) -> np.ndarray:
        """This layer's pixels (count, rows, cols) from blended probabilities (classes, rows, cols)."""
        if self.is_labels:
            return to_labels(probs, self.threshold)[np.newaxis]
        return to_probs(probs, self.dtype)


def output_layers(spec: OutputSpec, class_names: tuple[str, ...], classes: int) -> tuple[Layer, ...]:
    """The layers ``spec`` asks for, for a model with ``classes`` output channels (1 = binary)."""
    layers = []
    if spec.writes_labels:
        layers.append(Layer("labels", 1, "uint8", float(NODATA_UINT8), ("class",), spec.threshold))
    if spec.writes_probs:
        names = class_names[1:2] if classes == 1 else class_names[:classes]
        layers.append(Layer("probs", classes, spec.probs_dtype, spec.probs_nodata, tuple(f"p({n})" for n in names)))
    return tuple(layers)
