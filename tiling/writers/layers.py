"""Output layers: the label map and the probability bands, with their dtype, nodata and band names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encode import NODATA_UINT8, NODATA_UINT32, OutputSpec, to_labels, to_probs


@dataclass(frozen=True)
class Layer:
    """One raster of the work store: an output ("labels", "probs", "instances") or one an output is made from."""

    name: str
    count: int
    dtype: str
    nodata: float
    band_names: tuple[str, ...]
    threshold: float = 0.5

    @property
    def is_labels(self) -> bool:
        return self.name == "labels"

    @property
    def from_probs(self) -> bool:
        """Whether the layer is encoded from a chunk's blended probabilities (instances are found later)."""
        return self.name in ("labels", "probs")

    @property
    def is_map(self) -> bool:
        """A one-band (y, x) raster rather than bands (band, y, x)."""
        return self.count == 1 and self.name != "probs"

    def shape(self, height: int, width: int) -> tuple[int, ...]:
        """The layer's array shape: (y, x) for a map, (band, y, x) for probabilities."""
        return (height, width) if self.is_map else (self.count, height, width)

    def nbytes(self, height: int, width: int) -> int:
        """Uncompressed bytes of the layer over ``height`` × ``width`` pixels."""
        return self.count * height * width * np.dtype(self.dtype).itemsize

    def encode(self, probs: np.ndarray) -> np.ndarray:
        """This layer's pixels (count, rows, cols) from blended probabilities (classes, rows, cols)."""
        if self.is_labels:
            return to_labels(probs, self.threshold)[np.newaxis]
        if self.name == "probs":
            return to_probs(probs, self.dtype)
        raise ValueError(f"the {self.name} layer is not encoded from probabilities")


def labels_layer(threshold: float) -> Layer:
    return Layer("labels", 1, "uint8", float(NODATA_UINT8), ("class",), threshold)


def instances_layer() -> Layer:
    return Layer("instances", 1, "uint32", float(NODATA_UINT32), ("object",))


def output_layers(spec: OutputSpec, class_names: tuple[str, ...], classes: int) -> tuple[Layer, ...]:
    """The layers ``spec`` asks for, for a model with ``classes`` output channels (1 = binary)."""
    layers = []
    if spec.writes_labels:
        layers.append(labels_layer(spec.threshold))
    if spec.writes_instances:
        layers.append(instances_layer())
    if spec.writes_probs:
        names = class_names[1:2] if classes == 1 else class_names[:classes]
        layers.append(Layer("probs", classes, spec.probs_dtype, spec.probs_nodata, tuple(f"p({n})" for n in names)))
    return tuple(layers)
