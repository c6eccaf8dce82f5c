"""Output formats, chosen from the output's name or ``--format``."""

from __future__ import annotations

from pathlib import Path

from ..errors import OptionError
from .encode import OutputSpec
from .ome_zarr import labels_target

FORMATS = ("cog", "geotiff", "ome-tiff", "ome-zarr", "zarr")
TIFF_FORMATS = ("cog", "geotiff", "ome-tiff")
_SUFFIXES = (
    (".ome.tif", "ome-tiff"),
    (".ome.tiff", "ome-tiff"),
    (".ome.zarr", "ome-zarr"),
    (".zarr", "zarr"),
    (".tif", "cog"),
    (".tiff", "cog"),
)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((suffix for suffix, _ in _SUFFIXES if name.endswith(suffix)), path.suffix)


def output_format(path: Path, explicit: str | None = None) -> str:
    """``explicit`` if given, else from the name: ``.tif`` → COG, ``.ome.tif`` → OME-TIFF, ``.ome.zarr`` →
    OME-Zarr, ``.zarr`` → Zarr; a path ``IMAGE.ome.zarr/labels/NAME`` in an existing OME-Zarr image →
    ``ngff-labels`` (a label image of that image)."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise OptionError(f"unknown output format {explicit!r} (expected one of {', '.join(FORMATS)})")
        suffix = _suffix(path).lower()
        tiff = suffix in (".tif", ".tiff", ".ome.tif", ".ome.tiff")
        if (explicit in TIFF_FORMATS) != tiff:
            raise OptionError(f"format {explicit} does not fit the output name {path.name}")
        return explicit
    if labels_target(path) is not None:
        return "ngff-labels"
    name = path.name.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise OptionError(f"cannot tell the output format of {path.name} (use .tif, .ome.tif, .zarr or .ome.zarr)")


def output_paths(path: Path, fmt: str, spec: OutputSpec) -> list[Path]:
    """Every path a run writes: TIFF formats with both kinds write labels to PATH and probabilities beside it
    (``NAME_probs.tif``); Zarr formats hold both in one store."""
    if fmt in TIFF_FORMATS and spec.kind == "both":
        suffix = _suffix(path)
        stem = path.name[: -len(suffix)]
        return [path, path.with_name(f"{stem}_probs{suffix}")]
    return [path]
