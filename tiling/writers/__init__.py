"""Open the outputs of a run: ``open_outputs(path, ...)`` picks the format from the name.

``.tif``/``.tiff`` → GeoTIFF (georeferenced when the input is); ``.zarr`` → Zarr v3 group. With
``--output-kind both`` a GeoTIFF run writes labels to PATH and probabilities to ``PATH_probs.tif``; a Zarr
group holds both arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import OptionError
from ..plan import Span
from ..readers.base import RasterInfo
from .atomic import check_destination, partial_path
from .encode import OutputSpec
from .geotiff import GeoTiffSink
from .layers import output_layers
from .zarr_writer import ZarrSink

__all__ = ["OutputSet", "OutputSpec", "open_outputs", "output_format", "output_paths"]

FORMATS = {".tif": "geotiff", ".tiff": "geotiff", ".zarr": "zarr"}


class Sink(Protocol):
    def write(self, rows: Span, cols: Span, probs: np.ndarray) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OptionError(f"cannot tell the output format of {path.name} (use a .tif or .zarr name)")
    return fmt


def output_paths(path: Path, spec: OutputSpec) -> list[Path]:
    """Every path a run writes (for GeoTIFF with both kinds: labels at PATH, probabilities beside it)."""
    if output_format(path) == "geotiff" and spec.kind == "both":
        return [path, path.with_name(f"{path.stem}_probs{path.suffix}")]
    return [path]


@dataclass
class OutputSet:
    """All sinks of one run; chunks go to every sink, and all are committed or aborted together."""

    sinks: list[Sink] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def write(self, rows: Span, cols: Span, probs: np.ndarray) -> None:
        for sink in self.sinks:
            sink.write(rows, cols, probs)

    def commit(self) -> None:
        for sink in self.sinks:
            sink.commit()

    def abort(self) -> None:
        for sink in self.sinks:
            sink.abort()


def check_outputs(path: Path, spec: OutputSpec, overwrite: bool) -> list[Path]:
    """Validate the destination(s) before any work starts; returns the paths that will be written."""
    paths = output_paths(path, spec)
    for p in paths:
        check_destination(p, overwrite)
    return paths


def open_outputs(
    path: Path,
    info: RasterInfo,
    spec: OutputSpec,
    classes: int,
    chunk: tuple[int, int],
    overwrite: bool,
) -> OutputSet:
    """Create the partial outputs for a run over a raster described by ``info``."""
    paths = check_outputs(path, spec, overwrite)
    layers = output_layers(spec, classes)
    outputs = OutputSet(paths=paths)
    try:
        if output_format(path) == "zarr":
            outputs.sinks.append(ZarrSink(path, layers, info, chunk, spec.class_names))
        else:
            for p, layer in zip(paths, layers, strict=True):
                outputs.sinks.append(GeoTiffSink(p, layer, info, spec.class_names))
    except BaseException:
        outputs.abort()
        raise
    return outputs


def partial_paths(paths: list[Path]) -> list[Path]:
    return [partial_path(p) for p in paths]
