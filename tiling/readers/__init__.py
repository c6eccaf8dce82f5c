"""Open any supported raster for windowed reads: ``open_raster(path, bands, level=, mpp=)``.

GeoTIFF/COG and other GDAL formats go through rasterio; TIFF without georeferencing (flat images and slides:
SVS, NDPI, OME-TIFF, pyramidal TIFF) through tifffile; Zarr stores through zarr. A slide is read at a pyramid
``level``, or at ``mpp`` µm per pixel: the closest level not coarser than that, area-resampled to it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path

from ..errors import InputError, OptionError, TilewiseWarning, option
from ..storage import StoragePath, StorageSettings
from ..storage.read_cache import TILE_CACHE_BYTES
from .base import RasterInfo, RasterReader, round_um
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
    "read_cache_bytes",
]

#: GDAL's cache of the ranges it fetched from network files, when ``CPL_VSIL_CURL_CACHE_SIZE`` does not say
#: (GDAL's default).
GDAL_CURL_CACHE_BYTES = 16 * 2**20

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(location: StoragePath) -> bool:
    with location.open_read(block_size=4096) as f:
        return f.read(4) in _TIFF_MAGIC


def _is_georeferenced_tiff(path: str) -> bool:
    with open_tiff(path) as tif:
        return bool(tif.is_geotiff)


def _kind(path: str | os.PathLike[str]) -> tuple[str, str]:
    """What ``path`` holds ("zarr", "slide" or "gdal") and the name its reader opens. A local file must exist;
    a URL must answer (a GDAL-only name such as ``/vsicurl/…`` is left to GDAL)."""
    location = StoragePath.of(path)
    if location.is_remote:
        StorageSettings.from_environment().apply()  # GDAL reads its settings from the environment
        if location.text.startswith("/vsi"):
            return "gdal", location.text
        info = location.info()
        if info.get("type") == "directory" or location.name.endswith(".zarr"):
            return "zarr", location.url
        if not info.get("size"):
            raise InputError(f"input {location} is an empty file")
        if _is_tiff(location) and not _is_georeferenced_tiff(location.url):
            return "slide", location.url
        return "gdal", location.text
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if p.is_dir() or p.suffix == ".zarr":
        return "zarr", str(p)
    if p.stat().st_size == 0:
        raise InputError(f"input {p} is an empty file")
    if _is_tiff(location) and not _is_georeferenced_tiff(str(p)):
        return "slide", str(p)
    return "gdal", str(p)


def open_raster(
    path: str | os.PathLike[str],
    bands: tuple[int, ...] | list[int] | None = None,
    level: int | None = None,
    mpp: float | None = None,
    mpp_tolerance: float = 0.05,
    input_mpp: float | None = None,
    model_mpp: float | None = None,
) -> RasterReader:
    """Open ``path`` for windowed reads of ``bands`` (1-based; None = all).

    ``level`` or ``mpp`` (not both) choose the resolution of a slide; see ``choose_level`` for
    ``mpp_tolerance``. ``input_mpp`` declares the input's pixel size (µm) where it states none (PNG, plain TIFF);
    ``model_mpp`` is the pixel size a model was trained at: an input whose pixel size is known is then read at
    it unless ``level`` or ``mpp`` say otherwise. Reads are in the chosen level's (or the resampled) grid.
    ``path`` may be a URL (``s3://``, ``https://``, GDAL's ``/vsis3/``…): read window by window with ranged
    requests, each worker with its own handle.
    """
    kind, name = _kind(path)
    if level is not None and mpp is not None:
        raise OptionError("give either --level or --mpp, not both")
    if kind == "slide":
        return _open_slide(name, bands, level, mpp, mpp_tolerance, input_mpp, model_mpp)
    reader: RasterReader = ZarrReader(name, bands) if kind == "zarr" else GdalReader(name, bands)
    p = name
    try:
        _declare_pixel_size(reader, input_mpp)
        if level is not None:
            raise OptionError(f"--level chooses a level of a slide pyramid; {p} is a {reader.info.format} raster")
        target = mpp if mpp is not None else model_mpp
        if target is None or (mpp is None and reader.info.pixel_size_um is None):
            return reader
        if reader.info.pixel_size_um is None:
            raise OptionError(
                f"--mpp needs the input's pixel size, which {p} does not state; declare it with "
                f"{option('input_mpp', 'µm')}"
            )
        return _resampled(reader, target, mpp_tolerance)
    except BaseException:
        reader.close()
        raise


def _declare_pixel_size(reader: RasterReader, input_mpp: float | None) -> None:
    """Give ``reader`` (and a slide's levels) the pixel size ``input_mpp`` declares."""
    if input_mpp is None:
        return
    sy, sx = reader.info.level0_scale
    reader.info = replace(reader.info, pixel_size_um=(round_um(input_mpp * sy), round_um(input_mpp * sx)))
    levels = getattr(reader, "levels", None)
    if levels:
        reader.levels = tuple(  # type: ignore[attr-defined]
            replace(lv, pixel_size_um=(round_um(input_mpp * lv.downsample[0]), round_um(input_mpp * lv.downsample[1])))
            for lv in levels
        )


def _resampled(reader: RasterReader, mpp: float, tolerance: float) -> RasterReader:
    """``reader`` resampled to ``mpp`` µm per pixel (as it is when within ``tolerance``)."""
    assert reader.info.pixel_size_um is not None
    size_y, size_x = reader.info.pixel_size_um
    factor = (mpp / size_y, mpp / size_x)
    if all(abs(f - 1) <= tolerance for f in factor):
        return reader
    if min(factor) < 1:
        warnings.warn(
            f"reading {reader.info.path} at {mpp:g} µm/px, finer than its {size_x:.4g} µm/px: upsampled "
            f"{1 / min(factor):.3g}x (bilinear)",
            TilewiseWarning,
            stacklevel=3,
        )
    return ResampledReader(reader, factor)


def _open_slide(
    path: str,
    bands: tuple[int, ...] | list[int] | None,
    level: int | None,
    mpp: float | None,
    tolerance: float,
    input_mpp: float | None,
    model_mpp: float | None,
) -> RasterReader:
    reader = TiffReader(path, bands)
    try:
        _declare_pixel_size(reader, input_mpp)
        if level is None and mpp is None and (model_mpp is None or reader.levels[0].pixel_size_um is None):
            return reader
        if level is not None:
            check_level(reader.levels, level, path)
            factor = (1.0, 1.0)
        else:
            level, factor = choose_level(reader.levels, mpp if mpp is not None else model_mpp, tolerance, path)
    except BaseException:
        reader.close()
        raise
    if level != 0:
        reader.close()
        reader = TiffReader(path, bands, level)
        _declare_pixel_size(reader, input_mpp)
    return reader if factor == (1.0, 1.0) else ResampledReader(reader, factor)


def read_cache_bytes(reader: RasterReader) -> int:
    """Bytes the process keeps of what it fetched while reading ``reader``'s file: for a remote slide, the tile
    cache (``read_cache.TILE_CACHE_BYTES``, and no more than the file); for a remote raster read by GDAL, GDAL's
    cache of fetched ranges and, when tiled, the decoded blocks kept for the next chunks' halos
    (``GdalReader.block_cache_bytes``); nothing for a local file or a Zarr store (zarr keeps no fetched chunk)."""
    location = StoragePath.of(reader.info.path)
    if not location.is_remote:
        return 0
    base = reader.base if isinstance(reader, ResampledReader) else reader
    if isinstance(base, TiffReader):
        return min(TILE_CACHE_BYTES, int(location.info().get("size") or TILE_CACHE_BYTES))
    if isinstance(base, GdalReader):
        return int(os.environ.get("CPL_VSIL_CURL_CACHE_SIZE") or GDAL_CURL_CACHE_BYTES) + base.block_cache_bytes
    return 0
