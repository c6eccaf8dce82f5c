"""Output formats: one class per format, chosen once from the output's name or ``--format``.

A format object knows the files it makes at its path, where each layer sits in the work store, how the finished
store becomes those files (assembled, checked, moved into place), what it leaves behind when a run fails, and
how much disk it needs. ``RunOutput`` (``output.py``) drives it; nothing else compares format names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import OptionError
from ..instances.spec import InstanceSpec
from ..readers.base import RasterInfo
from .atomic import check_destination
from .disk import DiskNeed
from .encode import NODATA_UINT8, OutputSpec
from .layers import Layer, labels_layer
from .workstore import WorkStore


@dataclass(frozen=True)
class OutputContent:
    """What a run writes: the raster it covers, its output layers and the model's class names; with
    ``instances``, the rule that finds objects in the label map (thresholded at ``threshold``)."""

    info: RasterInfo
    layers: tuple[Layer, ...]
    class_names: tuple[str, ...]
    instances: InstanceSpec | None = None
    threshold: float = 0.5

    @property
    def work_layers(self) -> tuple[Layer, ...]:
        """Layers the work store holds only to make the outputs: for objects, the label map (when it is no
        output), each pixel's confidence, the chunks' seeds and each pixel's object (a row of its chunk's table)."""
        if self.instances is None:
            return ()
        labels = () if any(layer.is_labels for layer in self.layers) else (labels_layer(self.threshold),)
        return (
            *labels,
            Layer("confidence", 1, "uint8", float(NODATA_UINT8), ("confidence",)),
            Layer("seeds", 1, "uint32", 0.0, ("seed",)),
            Layer("object_rows", 1, "uint32", 0.0, ("object",)),
        )

    @property
    def later_passes(self) -> tuple[str, ...]:
        """Passes over the chunks after they are written, each flagged per chunk: objects grown and measured,
        then numbered."""
        return ("objects", "ids") if self.instances is not None else ()

    @property
    def tables(self) -> tuple[str, ...]:
        """Per-chunk tables the work store keeps: the seeds' pieces (as each chunk is written) and the objects."""
        return ("pieces", "objects") if self.instances is not None else ()

    def attributes(self) -> dict[str, Any]:
        """What a Zarr output says of itself in its attributes."""
        info = self.info
        return {
            "software": "tilewise",
            "class_names": list(self.class_names),
            "crs": info.crs,
            "transform": list(info.transform) if info.transform else None,
            "pixel_size_um": list(info.pixel_size_um) if info.pixel_size_um else None,
        }


class OutputFormat(ABC):
    """One output format at one path (see the module's docstring)."""

    #: The name ``--format`` takes and the run record keeps.
    name: ClassVar[str]
    #: Name endings that choose this format (lower case, longest first across formats).
    suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, spec: OutputSpec) -> None:
        self.path, self.spec = path, spec

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Whether ``path`` asks for this format whatever its name ends in (a label image inside an image)."""
        return False

    def paths(self) -> list[Path]:
        """Every path the run writes, the label map's first."""
        return [self.path]

    def layer_raster(self, name: str) -> Path | None:
        """The layer ``name`` ("labels", "instances"), once written, as a raster tilewise reads (None when the run
        does not write it)."""
        return self.path / name if name in self.spec.layers else None

    def array_paths(self, layers: tuple[Layer, ...]) -> dict[str, str]:
        """Where each layer's level 0 sits in the work store."""
        return {layer.name: layer.name for layer in layers}

    def check_destination(self, overwrite: bool) -> None:
        """Refuse an unusable destination before any work starts."""
        for path in self.paths():
            check_destination(path, overwrite)

    def check_content(self, content: OutputContent) -> None:  # noqa: B027 - most formats take any content
        """Refuse content this format cannot hold (called once the raster and the model are known)."""

    @abstractmethod
    def assemble(self, store: WorkStore, content: OutputContent) -> None:
        """Make the output from the complete work ``store``, check it, and move it into place."""

    @abstractmethod
    def abort(self) -> None:
        """Remove what ``assemble`` left beside the output (never the work store)."""

    @abstractmethod
    def disk_needs(self, content: OutputContent, chunk: int, store_folder: Path | None) -> list[DiskNeed]:
        """What the run writes on disk at its peak, by folder: the work store in ``store_folder`` (None: a remote
        store) and whatever the assembly writes beside the output."""


def _suffix_of(path: Path, formats: tuple[type[OutputFormat], ...]) -> tuple[str, type[OutputFormat]] | None:
    name = path.name.lower()
    matches = [(s, f) for f in formats for s in f.suffixes if name.endswith(s)]
    return max(matches, key=lambda match: len(match[0])) if matches else None


def choose_format(
    path: Path, spec: OutputSpec, explicit: str | None, formats: tuple[type[OutputFormat], ...]
) -> OutputFormat:
    """The format of ``formats`` named ``explicit``, or else the one the name of ``path`` asks for."""
    if explicit is not None:
        chosen = next((f for f in formats if f.name == explicit), None)
        if chosen is None:
            names = ", ".join(f.name for f in formats if f.suffixes)
            raise OptionError(f"unknown output format {explicit!r} (expected one of {names})")
        by_name = _suffix_of(path, formats)
        if by_name is None or not _compatible(by_name[1], chosen):
            raise OptionError(f"format {explicit} does not fit the output name {path.name}")
        return chosen(path, spec)
    claimed = next((f for f in formats if f.claims(path)), None)
    if claimed is not None:
        return claimed(path, spec)
    by_name = _suffix_of(path, formats)
    if by_name is None:
        raise OptionError(f"cannot tell the output format of {path.name} (use .tif, .ome.tif, .zarr or .ome.zarr)")
    return by_name[1](path, spec)


def _compatible(by_name: type[OutputFormat], chosen: type[OutputFormat]) -> bool:
    """Whether ``--format chosen`` may write a file whose name asks for ``by_name`` (TIFF for TIFF, Zarr for Zarr)."""
    return issubclass(by_name, _family(chosen)) or issubclass(chosen, _family(by_name))


def _family(fmt: type[OutputFormat]) -> type[OutputFormat]:
    """The format's base just below ``OutputFormat`` (``TiffFormat`` or ``ZarrStoreFormat``)."""
    return next(base for base in reversed(fmt.__mro__) if issubclass(base, OutputFormat) and base is not OutputFormat)


__all__ = ["OutputContent", "OutputFormat", "choose_format"]
