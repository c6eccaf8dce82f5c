"""Open any supported raster for windowed reads: ``open_raster(path, bands)``.

GeoTIFF/COG and other GDAL formats go through rasterio; plain TIFF (no georeferencing) through tifffile;
Zarr stores through zarr.
"""

from __future__ import annotations

import os
from pathlib import Path

import tifffile

from ..errors import InputError
from .base import RasterInfo, RasterReader
from .geotiff import GdalReader
from .tiff import TiffReader
from .zarr_reader import ZarrReader

__all__ = ["GdalReader", "RasterInfo", "RasterReader", "TiffReader", "ZarrReader", "open_raster"]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _is_georeferenced_tiff(path: Path) -> bool:
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.is_geotiff
    except Exception as exc:
        raise InputError(f"{path} is not a readable TIFF: {exc}") from None


def open_raster(path: str | os.PathLike[str], bands: tuple[int, ...] | list[int] | None = None) -> RasterReader:
    """Open ``path`` for windowed reads of ``bands`` (1-based; None = all)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if p.is_dir() or p.suffix == ".zarr":
        return ZarrReader(str(p), bands)
    if p.stat().st_size == 0:
        raise InputError(f"input {p} is an empty file")
    if _is_tiff(p) and not _is_georeferenced_tiff(p):
        return TiffReader(str(p), bands)
    return GdalReader(str(p), bands)
