"""GeoTIFF and Cloud-Optimized GeoTIFF assembled from the work store by a single writer.

The level-0 GeoTIFF is written tiled and deflate-compressed (BigTIFF when large) with the input's CRS and
transform, chunk by chunk from the store. For a COG, GDAL's COG driver then copies it with overviews (nearest for
labels, average for probabilities) and the cloud-optimized layout (overviews and tile index first). Every GDAL
call runs under ``gdal_write_errors``, and the file is verified before it is moved into place.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from ..readers.base import RasterInfo
from .encode import UINT8_PROB_SCALE
from .formats import OutputContent
from .layers import Layer
from .tiff_files import TiffFormat, padded
from .verify import verify_geotiff
from .workstore import WorkStore
from .write_errors import gdal_write_errors

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


def _predictor(layer: Layer) -> int:
    """TIFF's predictor for ``layer``: differences between neighbours suit continuous values (probabilities), not
    class or object ids, whose maps deflate both smaller and faster without one."""
    if layer.is_map:
        return 1
    return 3 if layer.dtype == "float32" else 2


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
        "predictor": _predictor(layer),
        "BIGTIFF": "IF_SAFER",
    }
    if intermediate:  # read once by the COG copy, then deleted: compress fast
        profile.update(compress="zstd", zstd_level=1)
    if info.crs:
        profile["crs"] = info.crs
    if info.transform:
        profile["transform"] = Affine(*info.transform)
    return profile


def write_geotiff(array: zarr.Array, layer: Layer, content: OutputContent, dest: Path, intermediate: bool) -> None:
    """Write ``layer`` (its level-0 ``array`` in the work store) to ``dest`` as a tiled GeoTIFF."""
    info = content.info
    chunk_h, chunk_w = array.chunks[-2:]
    with gdal_write_errors(dest), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(dest, "w", **_profile(layer, info, intermediate)) as dst:
            for band, name in enumerate(layer.band_names, start=1):
                dst.set_band_description(band, name)
            dst.update_tags(class_names=",".join(content.class_names), software="tilewise")
            if layer.is_labels:
                dst.write_colormap(1, {i: (*PALETTE[i % len(PALETTE)], 255) for i in range(len(content.class_names))})
            elif layer.dtype == "uint8":
                dst.scales = (1.0 / UINT8_PROB_SCALE,) * layer.count
            for y in range(0, info.height, chunk_h):
                for x in range(0, info.width, chunk_w):
                    block = np.asarray(array[..., y : y + chunk_h, x : x + chunk_w])
                    if block.ndim == 2:
                        block = block[np.newaxis]
                    dst.write(block, window=Window(x, y, block.shape[-1], block.shape[-2]))


def copy_to_cog(source: Path, dest: Path, layer: Layer) -> None:
    """Copy the GeoTIFF ``source`` to ``dest`` as a COG with overviews (GDAL's COG driver)."""
    with gdal_write_errors(dest), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        rasterio.shutil.copy(
            source,
            dest,
            driver="COG",
            compress="deflate",
            predictor="NO" if _predictor(layer) == 1 else "YES",
            blocksize=COG_BLOCK,
            overview_resampling="nearest" if layer.is_map else "average",
            BIGTIFF="IF_SAFER",
            num_threads="ALL_CPUS",
        )


class GeoTiffFormat(TiffFormat):
    """A plain tiled GeoTIFF per layer (``--format geotiff``), with the input's CRS and transform."""

    name = "geotiff"

    def write_layer(self, store: WorkStore, layer: Layer, content: OutputContent, dest: Path) -> None:
        write_geotiff(store.array(layer.name), layer, content, dest, intermediate=False)

    def verify_layer(self, dest: Path, layer: Layer, content: OutputContent) -> None:
        info = content.info
        verify_geotiff(dest, (info.height, info.width), layer.count, layer.dtype, overview_block=None)

    def layer_file_needs(self, layer: Layer, content: OutputContent) -> tuple[int, int]:
        info = content.info
        return layer.nbytes(padded(info.height, BLOCK), padded(info.width, BLOCK)), 0


class CogFormat(GeoTiffFormat):
    """A Cloud-Optimized GeoTIFF per layer (``.tif``): a level-0 GeoTIFF beside it, copied by GDAL's COG driver."""

    name = "cog"
    suffixes = (".tif", ".tiff")

    def write_layer(self, store: WorkStore, layer: Layer, content: OutputContent, dest: Path) -> None:
        level0 = self.intermediate(dest)
        try:
            write_geotiff(store.array(layer.name), layer, content, level0, intermediate=True)
            copy_to_cog(level0, dest, layer)
        finally:
            level0.unlink(missing_ok=True)

    def verify_layer(self, dest: Path, layer: Layer, content: OutputContent) -> None:
        info = content.info
        verify_geotiff(dest, (info.height, info.width), layer.count, layer.dtype, overview_block=COG_BLOCK)

    def intermediate(self, dest: Path) -> Path:
        return dest.with_name(dest.name + ".level0")

    def scratch_files(self, dest: Path) -> list[Path]:
        return [dest, self.intermediate(dest)]

    def layer_file_needs(self, layer: Layer, content: OutputContent) -> tuple[int, int]:
        info = content.info
        cog = layer.nbytes(padded(info.height, COG_BLOCK), padded(info.width, COG_BLOCK)) * 4 // 3  # + overviews
        return cog, layer.nbytes(padded(info.height, BLOCK), padded(info.width, BLOCK))  # + the level-0 GeoTIFF


__all__ = ["PALETTE", "CogFormat", "GeoTiffFormat", "write_geotiff"]
