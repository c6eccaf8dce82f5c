"""A run's outputs: chunks go to a resumable work store, which is assembled into the requested files at the end.

``RunOutput(path, …)`` picks the format from the name (``.tif`` → Cloud-Optimized GeoTIFF, ``.ome.tif`` →
pyramidal OME-TIFF, ``.ome.zarr`` → OME-Zarr, ``.zarr`` → Zarr) or ``--format``. With ``--output-kind both`` a
TIFF run writes labels to PATH and probabilities to ``NAME_probs.tif``; a Zarr store holds both. Nothing appears
at PATH until the run is complete: the work store is ``PATH.partial`` and every file is renamed into place last.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from ..plan import Span
from ..readers.base import RasterInfo
from .atomic import check_destination, commit, remove_path
from .encode import OutputSpec
from .formats import FORMATS, output_format, output_paths
from .geotiff import write_geotiff
from .layers import Layer, output_layers
from .location import StoreLocation
from .ome_tiff import write_ome_tiff
from .ome_zarr import array_paths, ensure_labels_group, image_metadata, label_metadata, labels_target, register_label
from .pyramid import build_level, build_nearest_level, level_shapes
from .workstore import ARRAY_CONFIG, COMPRESSORS, WorkStore

__all__ = ["FORMATS", "OutputSpec", "RunOutput", "StoreLocation", "check_outputs", "output_format", "output_paths"]


def check_outputs(path: Path, fmt: str, spec: OutputSpec, overwrite: bool) -> list[Path]:
    """Validate the destination(s) before any work starts; returns the paths that will be written."""
    paths = output_paths(path, fmt, spec)
    if fmt == "ngff-labels":
        ensure_labels_group(path.parent.parent)
    for p in paths:
        check_destination(p, overwrite)
    return paths


def _descriptive_attributes(info: RasterInfo, class_names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "software": "tilewise",
        "class_names": list(class_names),
        "crs": info.crs,
        "transform": list(info.transform) if info.transform else None,
        "pixel_size_um": list(info.pixel_size_um) if info.pixel_size_um else None,
    }


class RunOutput:
    """Where one run's chunks go, and how they become the requested files."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        spec: OutputSpec,
        info: RasterInfo,
        classes: int,
        work: StoreLocation | None = None,
    ) -> None:
        self.final, self.fmt, self.spec, self.info = path, fmt, spec, info
        self.layers: list[Layer] = output_layers(spec, classes)
        self.paths = output_paths(path, fmt, spec)
        self.work = work or StoreLocation.for_output(path, None)
        #: Files assembled from the store wait here, next to their final names, until all are done.
        self.assembling = [p.with_name(p.name + ".assembling") for p in self.paths]
        self._download = path.with_name(path.name + ".download")
        self.source = labels_target(path) if fmt == "ngff-labels" else None
        if self.source is not None:
            if spec.kind != "labels":
                raise OptionError("an NGFF label image holds the label map only: use --output-kind labels")
            if self.source.shapes[0] != (info.height, info.width):
                raise OptionError(
                    f"{path} would label {self.source.group}, whose full-resolution image is "
                    f"{self.source.shapes[0][0]} x {self.source.shapes[0][1]}, but the run's raster is "
                    f"{info.height} x {info.width}: read that image at its full resolution"
                )
            self._array_paths = {"labels": self.source.paths[0]}
        elif fmt == "ome-zarr":
            self._array_paths = array_paths(self.layers)
        else:
            self._array_paths = {layer.name: layer.name for layer in self.layers}
        self.store: WorkStore | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def start(
        self, chunk: tuple[int, int], chunk_grid: tuple[int, int], run: dict[str, Any], resume: bool
    ) -> set[tuple[int, int]]:
        """Open the work store (reopening an interrupted run's when ``resume``); returns the chunks already done."""
        if resume and self.work.exists():
            self.store = WorkStore.reopen(self.work, self.layers, run, self._array_paths)
            return self.store.done_chunks()
        self.work.remove()
        attributes = _descriptive_attributes(self.info, self.class_names)
        self.store = WorkStore.create(
            self.work, self.info, self.layers, chunk, chunk_grid, run, attributes, self._array_paths
        )
        return set()

    def write(self, index: tuple[int, int], rows: Span, cols: Span, probs: np.ndarray) -> None:
        assert self.store is not None
        self.store.write(index, rows, cols, probs)

    def finalize(self) -> None:
        """Assemble the requested files from the complete work store and move them into place."""
        assert self.store is not None
        if self.fmt in ("zarr", "ome-zarr", "ngff-labels"):
            if self.fmt == "ome-zarr":
                self._build_ome_zarr()
            elif self.source is not None:
                self._build_source_levels()
            self.store.seal(_descriptive_attributes(self.info, self.class_names))
            if self.work.is_local:
                commit(self.work.path, self.final)
            else:  # a remote store: copy it down next to the output, then move it into place
                local = self._download
                remove_path(local)
                self.work.download(local)
                commit(local, self.final)
                self.work.remove()
            if self.source is not None:
                register_label(self.source, self.final.name)
            return
        for dest, layer in zip(self.assembling, self.layers, strict=True):
            if self.fmt == "ome-tiff":
                write_ome_tiff(self._pyramid(layer), layer, self.info, self.class_names, dest)
            else:
                write_geotiff(self.store, layer, self.info, self.class_names, dest, cog=self.fmt == "cog")
        for path, dest in zip(self.paths, self.assembling, strict=True):
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(dest, path)
        self.work.remove()

    def abort(self, keep_work: bool = False) -> None:
        """Remove what the run wrote; with ``keep_work`` the work store stays for ``--resume``."""
        for dest in [*self.assembling, self._download]:
            remove_path(dest)
        if not keep_work:
            self.work.remove()

    def _pyramid(self, layer: Layer) -> list[Any]:
        """Level 0 of ``layer`` and its reduced levels (built in the store next to it)."""
        assert self.store is not None
        level0 = self.store.array(layer.name)
        levels = [level0]
        group = self.store.group.require_group(f"levels_{layer.name}")
        for k, shape in enumerate(level_shapes(*level0.shape[-2:])[1:], start=1):
            levels.append(self._add_level(group, str(k), levels[-1], shape, layer))
        return levels

    def _add_level(self, group: Any, name: str, source: Any, shape: tuple[int, int], layer: Layer) -> Any:
        lead = source.shape[:-2]
        target = group.create_array(
            name,
            shape=(*lead, *shape),
            chunks=source.chunks,
            dtype=source.dtype,
            fill_value=layer.nodata,
            compressors=COMPRESSORS,
            config=ARRAY_CONFIG,
            dimension_names=source.metadata.dimension_names,
        )
        build_level(source, target, labels=layer.name == "labels", nodata=layer.nodata)
        return target

    def _build_source_levels(self) -> None:
        """The label image's reduced levels, at the source image's paths and sizes, and its metadata."""
        assert self.store is not None and self.source is not None
        root, layer = self.store.group, self.layers[0]
        previous = root[self.source.paths[0]]
        for path, shape in zip(self.source.paths[1:], self.source.shapes[1:], strict=True):
            target = root.create_array(
                path,
                shape=shape,
                chunks=tuple(min(c, s) for c, s in zip(previous.chunks, shape, strict=True)),
                dtype=previous.dtype,
                fill_value=layer.nodata,
                compressors=COMPRESSORS,
                config=ARRAY_CONFIG,
                dimension_names=("y", "x"),
            )
            build_nearest_level(previous, target)
            previous = target
        root.attrs.update(self.source.label_metadata(layer, self.class_names, self.final.name))

    def _build_ome_zarr(self) -> None:
        assert self.store is not None
        root = self.store.group
        for layer in self.layers:
            level0_path = self._array_paths[layer.name]
            parent_path = level0_path.rpartition("/")[0]
            parent = root[parent_path] if parent_path else root
            level0 = parent["0"]
            shapes = level_shapes(*level0.shape[-2:])
            previous = level0
            for k, shape in enumerate(shapes[1:], start=1):
                previous = self._add_level(parent, str(k), previous, shape, layer)
            if parent_path:  # the label image under labels/
                parent.attrs.update(label_metadata(layer, self.info, len(shapes), self.class_names))
                root["labels"].attrs.update({"ome": {"version": "0.5", "labels": ["classes"]}})
            else:
                root.attrs.update(image_metadata(layer, self.info, len(shapes)))
