"""Formats that write one TIFF file per layer: the label map at the output path, probabilities beside it.

With ``--output-kind both`` a TIFF run writes labels to ``NAME.tif`` and probabilities to ``NAME_probs.tif``
(``.ome.tif`` likewise). Each file is assembled at ``NAME.tif.assembling``, verified, and only once every file
of the run has passed its check are they all moved into place.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from pathlib import Path

from .atomic import remove_path
from .disk import DEFLATE_MAX_RATIO, OVERHEAD, DiskNeed
from .formats import OutputContent, OutputFormat
from .layers import Layer
from .workstore import WorkStore, store_disk_need
from .write_errors import os_write_errors


def padded(length: int, block: int) -> int:
    """``length`` rounded up to whole blocks (TIFF and Zarr store edge blocks whole)."""
    return -(-length // block) * block


def _suffix(path: Path, suffixes: tuple[str, ...]) -> str:
    name = path.name.lower()
    return next((s for s in sorted(suffixes, key=len, reverse=True) if name.endswith(s)), path.suffix)


class TiffFormat(OutputFormat):
    """One TIFF file per layer (see the module's docstring)."""

    #: Whether the assembly builds pyramid levels inside the work store (and so needs room for them there).
    levels_in_store = False

    def paths(self) -> list[Path]:
        """The first layer (labels, else instances, else probabilities) at the path, the others beside it."""
        suffix = _suffix(self.path, (".ome.tif", ".ome.tiff", ".tif", ".tiff"))
        stem = self.path.name[: -len(suffix)] if suffix else self.path.name
        return [self.path, *(self.path.with_name(f"{stem}_{name}{suffix}") for name in self.spec.layers[1:])]

    def layer_raster(self, name: str) -> Path | None:
        layers = self.spec.layers
        return self.paths()[layers.index(name)] if name in layers else None

    def assembling(self, path: Path) -> Path:
        """Where the file for ``path`` is assembled until every file of the run is done."""
        return path.with_name(path.name + ".assembling")

    def scratch_files(self, dest: Path) -> list[Path]:
        """Everything the assembly of ``dest`` may leave behind (``dest`` and its intermediates)."""
        return [dest]

    @abstractmethod
    def write_layer(self, store: WorkStore, layer: Layer, content: OutputContent, dest: Path) -> None:
        """Write ``layer`` from the work ``store`` to ``dest``."""

    @abstractmethod
    def verify_layer(self, dest: Path, layer: Layer, content: OutputContent) -> None:
        """Raise ``WriteFailure`` unless ``dest`` holds ``layer`` whole."""

    @abstractmethod
    def layer_file_needs(self, layer: Layer, content: OutputContent) -> tuple[int, int]:
        """Bytes of ``layer``'s finished file at most, and what its assembly holds besides it at most."""

    def assemble(self, store: WorkStore, content: OutputContent) -> None:
        destinations = [self.assembling(path) for path in self.paths()]
        for dest, layer in zip(destinations, content.layers, strict=True):
            with os_write_errors(dest):
                self.write_layer(store, layer, content, dest)
            self.verify_layer(dest, layer, content)
        for path, dest in zip(self.paths(), destinations, strict=True):
            with os_write_errors(path):
                if path.is_dir():
                    remove_path(path)
                os.replace(dest, path)

    def abort(self) -> None:
        for path in self.paths():
            for leftover in self.scratch_files(self.assembling(path)):
                remove_path(leftover)

    def disk_needs(self, content: OutputContent, chunk: int, store_folder: Path | None) -> list[DiskNeed]:
        files = [self.layer_file_needs(layer, content) for layer in content.layers]
        finished = sum(final for final, _ in files)
        transient = max(extra for _, extra in files)
        lower = finished // DEFLATE_MAX_RATIO
        assembled = DiskNeed(self.path.parent, finished + transient + OVERHEAD, lower, f"the {self.name} output")
        if store_folder is None:  # a remote work store
            return [assembled]
        return [store_disk_need(content, chunk, store_folder, self.levels_in_store), assembled]
