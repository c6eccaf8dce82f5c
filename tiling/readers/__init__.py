"""Open any supported raster for windowed reads: ``open_raster(path, bands, level=, mpp=)``.

GeoTIFF/COG and other GDAL formats go through rasterio; TIFF without georeferencing (flat images and slides:
SVS, NDPI, OME-TIFF, pyramidal TIFF) through tifffile; Zarr stores through zarr. A slide is read at a pyramid
``level``, or at ``mpp`` µm per pixel: the closest level not coarser than that, area-resampled to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, OptionError
from .base import RasterInfo, RasterReader
from .geotiff import GdalReader
from .resample import ResampledReader
from .slide import Level, check_level, choose_level
from .tiff import TiffReader
from .tiff_files import open_tiff
from .zarr_reader import ZarrReader

__all__ = [
    "GdalReader",
    "Level",
    "RasterInfo",
    "RasterReader",
    "ResampledReader",
    "TiffReader",
    "ZarrReader",
    "open_raster",
]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _is_georeferenced_tiff(path: Path) -> bool:
    with open_tiff(str(path)) as tif:
        return bool(tif.is_geotiff)


def open_raster(
    path: str | os.PathLike[str],
    bands: tuple[int, ...] | list[int] | None = None,
    level: int | None = None,
    mpp: float | None = None,
    mpp_tolerance: float = 0.05,
) -> RasterReader:
    """Open ``path`` for windowed reads of ``bands`` (1-based; None = all).

    ``level`` or ``mpp`` (not both) choose the resolution of a TIFF slide; see ``choose_level`` for
    ``mpp_tolerance``. Reads are then in that level's (or the resampled) pixel grid.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if level is not None and mpp is not None:
        raise OptionError("give either --level or --mpp, not both")
    if p.is_dir() or p.suffix == ".zarr":
        _no_levels(p, "Zarr", level, mpp)
        return ZarrReader(str(p), bands)
    if p.stat().st_size == 0:
        raise InputError(f"input {p} is an empty file")
    if _is_tiff(p) and not _is_georeferenced_tiff(p):
        return _open_slide(str(p), bands, level, mpp, mpp_tolerance)
    reader = GdalReader(str(p), bands)
    try:
        _no_levels(p, reader.info.format, level, mpp)
    except OptionError:
        reader.close()
        raise
    return reader


def _no_levels(path: Path, fmt: str, level: int | None, mpp: float | None) -> None:
    if level is not None or mpp is not None:
        flag = "--level" if level is not None else "--mpp"
        raise OptionError(f"{flag} chooses a resolution of a TIFF slide; {path} is a {fmt} raster, read as it is")


def _open_slide(
    path: str, bands: tuple[int, ...] | list[int] | None, level: int | None, mpp: float | None, tolerance: float
) -> RasterReader:
    reader = TiffReader(path, bands)
    if level is None and mpp is None:
        return reader
    try:
        if level is not None:
            check_level(reader.levels, level, path)
            factor = (1.0, 1.0)
        else:
            assert mpp is not None
            level, factor = choose_level(reader.levels, mpp, tolerance, path)
    except OptionError:
        reader.close()
        raise
    if level != 0:
        reader.close()
        reader = TiffReader(path, bands, level)
    return reader if factor == (1.0, 1.0) else ResampledReader(reader, factor)
