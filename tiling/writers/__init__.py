"""A run's outputs: chunks go to a resumable work store, which is assembled into the requested files at the end.

The format is chosen once, from the output's name or ``--format`` (``output_format``): ``.tif`` → Cloud-Optimized
GeoTIFF, ``.ome.tif`` → pyramidal OME-TIFF, ``.ome.zarr`` → OME-Zarr, ``.zarr`` → Zarr, and a path
``IMAGE.ome.zarr/labels/NAME`` inside an existing OME-Zarr image → an NGFF label image of that image. The format
object knows its files, its work-store layout, its assembly and its disk needs; ``RunOutput.writing`` drives it.
Nothing appears at the output path until the run is complete and the assembled output has passed its check.
"""

from __future__ import annotations

from pathlib import Path

from .destination import Destination
from .encode import OUTPUT_KINDS, PROBS_DTYPES, OutputSpec
from .formats import OutputContent, OutputFormat, choose_format
from .geotiff import CogFormat, GeoTiffFormat
from .layers import Layer, output_layers
from .location import StoreLocation
from .ngff_labels import NgffLabelsFormat
from .ome_tiff import OmeTiffFormat
from .ome_zarr import OmeZarrFormat
from .output import RunOutput, Writing
from .workstore import WorkStore, recorded_run
from .zarr_store import ZarrFormat

#: Every output format, in the order a path is matched against them (a label image inside an image first).
FORMAT_CLASSES: tuple[type[OutputFormat], ...] = (
    NgffLabelsFormat,
    CogFormat,
    GeoTiffFormat,
    OmeTiffFormat,
    OmeZarrFormat,
    ZarrFormat,
)
#: What ``--format`` takes.
FORMATS = ("cog", "geotiff", "ome-tiff", "ome-zarr", "zarr")


def output_format(path: Path, spec: OutputSpec | None = None, explicit: str | None = None) -> OutputFormat:
    """The format ``explicit`` names, or else the one ``path`` asks for, writing ``spec`` at ``path``."""
    return choose_format(Path(path), spec or OutputSpec(), explicit, FORMAT_CLASSES)


__all__ = [
    "FORMATS",
    "OUTPUT_KINDS",
    "PROBS_DTYPES",
    "Destination",
    "Layer",
    "OutputContent",
    "OutputFormat",
    "OutputSpec",
    "RunOutput",
    "StoreLocation",
    "WorkStore",
    "Writing",
    "output_format",
    "output_layers",
    "recorded_run",
]
