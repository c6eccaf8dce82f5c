"""GeoTIFF and Cloud-Optimized GeoTIFF assembled from the work store by a single writer.

The level-0 GeoTIFF is written tiled and deflate-compressed (BigTIFF when large) with the input's CRS and
transform, chunk by chunk from the store. For a COG, GDAL's COG driver then copies it with overviews (nearest for
labels, average for probabilities) and the cloud-optimized layout (overviews and tile index first).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from ..errors import OutputError
from ..readers.base import RasterInfo
from .encode import UINT8_PROB_SCALE
from .layers import Layer
from .workstore import WorkStore

BLOCK = 256
COG_BLOCK = 512
#: Label colours for QGIS and other viewers.
PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


def _profile(layer: Layer, info: RasterInfo, intermediate: bool) -> dict[str, object]:
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": info.width,
        "height": info.height,
        "count": layer.count,
        "dtype": layer.dtype,
        "nodata": layer.nodata,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "predictor": 3 if layer.dtype == "float32" else 2,
        "BIGTIFF": "IF_SAFER",
    }
    if intermediate:  # read once by the COG copy, then deleted: compress fast
        profile.update(compress="zstd", zstd_level=1)
    if info.crs:
        profile["crs"] = info.crs
    if info.transform:
        profile["transform"] = Affine(*info.transform)
    return profile


def write_geotiff(
    store: WorkStore, layer: Layer, info: RasterInfo, class_names: tuple[str, ...], dest: Path, cog: bool
) -> None:
    """Write ``layer`` of the store to ``dest`` as a tiled GeoTIFF, or a COG when ``cog``."""
    level0 = dest.with_name(dest.name + ".level0") if cog else dest
    array = store.array(layer.name)
    chunk_h, chunk_w = array.chunks[-2:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(level0, "w", **_profile(layer, info, intermediate=cog)) as dst:
                for band, name in enumerate(layer.band_names, start=1):
                    dst.set_band_description(band, name)
                dst.update_tags(class_names=",".join(class_names), software="tilewise")
                if layer.name == "labels":
                    colours = {i: (*PALETTE[i % len(PALETTE)], 255) for i in range(len(class_names))}
                    dst.write_colormap(1, colours)
                elif layer.dtype == "uint8":
                    dst.scales = (1.0 / UINT8_PROB_SCALE,) * layer.count
                for y in range(0, info.height, chunk_h):
                    for x in range(0, info.width, chunk_w):
                        block = np.asarray(array[..., y : y + chunk_h, x : x + chunk_w])
                        if block.ndim == 2:
                            block = block[np.newaxis]
                        dst.write(block, window=Window(x, y, block.shape[-1], block.shape[-2]))
            if cog:
                rasterio.shutil.copy(
                    level0,
                    dest,
                    driver="COG",
                    compress="deflate",
                    predictor="YES",
                    blocksize=COG_BLOCK,
                    overview_resampling="nearest" if layer.name == "labels" else "average",
                    BIGTIFF="IF_SAFER",
                    num_threads="ALL_CPUS",
                )
                level0.unlink()
    except RasterioError as exc:
        raise OutputError(f"cannot write {dest}: {exc}") from None
