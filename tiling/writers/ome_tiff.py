"""Pyramidal OME-TIFF assembled from the work store: tiled, one SubIFD per pyramid level, OME-XML metadata.

tifffile's ``TiffWriter`` takes level 0 as an iterator of tiles in storage order (plane by plane, row by row),
then each reduced level as ``subfiletype=1``; the writer reads the store one strip of tiles at a time, so memory
stays at one strip whatever the image size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import zarr

from ..readers.base import RasterInfo
from .layers import Layer

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


def write_ome_tiff(
    levels: list[zarr.Array], layer: Layer, info: RasterInfo, class_names: tuple[str, ...], dest: Path
) -> None:
    """Write a layer's pyramid (``levels``, level 0 first) as a pyramidal OME-TIFF at ``dest``."""
    single = layer.count == 1
    metadata: dict[str, object] = {
        "axes": "YX" if single else "CYX",
        "Name": f"tilewise {layer.name}",
        "Channel": {"Name": list(layer.band_names)},
    }
    if info.pixel_size_um:
        size_y, size_x = info.pixel_size_um
        metadata.update(PhysicalSizeX=size_x, PhysicalSizeXUnit="µm", PhysicalSizeY=size_y, PhysicalSizeYUnit="µm")
    if layer.name == "labels":
        metadata["Description"] = "class ids: " + ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
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
