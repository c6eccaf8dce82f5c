"""Pyramidal OME-TIFF assembled from the work store: tiled, one SubIFD per pyramid level, OME-XML metadata.

The reduced levels are first built in the work store next to level 0 (``levels_NAME/1, 2, …``); tifffile's
``TiffWriter`` then takes level 0 as an iterator of tiles in storage order (plane by plane, row by row) and each
reduced level as ``subfiletype=1``, reading the store one strip of tiles at a time, so memory stays at one strip
whatever the image size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import zarr

from .formats import OutputContent
from .layers import Layer
from .pyramid import add_level, level_shapes
from .tiff_files import TiffFormat, padded
from .verify import verify_ome_tiff
from .workstore import WorkStore

TILE = 256


def _tiles(array: zarr.Array) -> Iterator[np.ndarray]:
    """Tiles of a (bands, y, x) or (y, x) array in TIFF storage order, edge tiles padded to full size."""
    height, width = array.shape[-2:]
    planes = array.shape[0] if array.ndim == 3 else 1
    for plane in range(planes):
        for y in range(0, height, TILE):
            strip = np.asarray(array[plane, y : y + TILE, :] if array.ndim == 3 else array[y : y + TILE, :])
            for x in range(0, width, TILE):
                tile = strip[:, x : x + TILE]
                if tile.shape != (TILE, TILE):
                    tile = np.pad(tile, ((0, TILE - tile.shape[0]), (0, TILE - tile.shape[1])))
                yield tile


def write_ome_tiff(levels: list[zarr.Array], layer: Layer, content: OutputContent, dest: Path) -> None:
    """Write a layer's pyramid (``levels``, level 0 first) as a pyramidal OME-TIFF at ``dest``."""
    single = layer.count == 1
    metadata: dict[str, object] = {
        "axes": "YX" if single else "CYX",
        "Name": f"tilewise {layer.name}",
        "Channel": {"Name": list(layer.band_names)},
    }
    if content.info.pixel_size_um:
        size_y, size_x = content.info.pixel_size_um
        metadata.update(PhysicalSizeX=size_x, PhysicalSizeXUnit="µm", PhysicalSizeY=size_y, PhysicalSizeYUnit="µm")
    if layer.is_labels:
        metadata["Description"] = "class ids: " + ", ".join(f"{i}={n}" for i, n in enumerate(content.class_names))
    options: dict[str, object] = {
        "tile": (TILE, TILE),
        "photometric": "minisblack",
        "compression": "zlib",
        "dtype": np.dtype(layer.dtype),
    }
    with tifffile.TiffWriter(dest, bigtiff=True, ome=True) as tif:
        for level, array in enumerate(levels):
            shape = array.shape[-2:] if single else (layer.count, *array.shape[-2:])
            if level == 0:
                tif.write(_tiles(array), shape=shape, subifds=len(levels) - 1, metadata=metadata, **options)
            else:
                tif.write(_tiles(array), shape=shape, subfiletype=1, metadata=None, **options)


def _pyramid(store: WorkStore, layer: Layer) -> list[zarr.Array]:
    """Level 0 of ``layer`` and its reduced levels, built in the work store next to it."""
    group = store.group.require_group(f"levels_{layer.name}")
    levels = [store.array(layer.name)]
    for k, shape in enumerate(level_shapes(*levels[0].shape[-2:])[1:], start=1):
        levels.append(add_level(group, str(k), levels[-1], shape, layer))
    return levels


class OmeTiffFormat(TiffFormat):
    """A pyramidal OME-TIFF per layer (``.ome.tif``) for QuPath and other slide viewers."""

    name = "ome-tiff"
    suffixes = (".ome.tif", ".ome.tiff")
    levels_in_store = True

    def write_layer(self, store: WorkStore, layer: Layer, content: OutputContent, dest: Path) -> None:
        write_ome_tiff(_pyramid(store, layer), layer, content, dest)

    def verify_layer(self, dest: Path, layer: Layer, content: OutputContent) -> None:
        info = content.info
        lead = () if layer.count == 1 else (layer.count,)
        verify_ome_tiff(dest, [(*lead, *shape) for shape in level_shapes(info.height, info.width)], layer.dtype)

    def layer_file_needs(self, layer: Layer, content: OutputContent) -> tuple[int, int]:
        info = content.info
        return layer.nbytes(padded(info.height, TILE), padded(info.width, TILE)) * 4 // 3, 0


__all__ = ["OmeTiffFormat", "write_ome_tiff"]
