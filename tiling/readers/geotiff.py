"""GeoTIFF, COG and any other raster GDAL reads, through rasterio."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from ..errors import InputError
from ..plan import Span
from ..storage import StoragePath, StorageSettings
from .base import HandlePool, RasterInfo, check_dtype, check_shape, nan_free, read_error, select_bands
from .block_cache import BLOCK_CACHE_BYTES, BlockCache, BlockGrid

#: Opening under ``warnings.catch_warnings`` one thread at a time: the filter list it swaps is global.
_OPENING = threading.Lock()


def open_quietly(path: str | Path, **options: Any) -> Any:
    """``rasterio.open(path, **options)`` for reading, without its ``NotGeoreferencedWarning``: a PNG, a JPEG or a
    slide has no map georeferencing and needs none (tilewise reports what lacks it where it matters, e.g. a COG
    output)."""
    with _OPENING, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, **options)


class GdalReader:
    """Windowed reads through rasterio; one GDAL handle per concurrent reader thread. A URL is read with ranged
    requests through GDAL's network file systems, with the storage settings of the process that opened the
    reader applied wherever it lands (a cluster worker)."""

    def __init__(self, path: str, bands: tuple[int, ...] | list[int] | None = None) -> None:
        self.path = path
        location = StoragePath.of(path)
        self._gdal_path = location.gdal_path
        self._settings = StorageSettings.from_environment() if location.is_remote else None
        try:
            with self._open() as ds:
                check_shape(ds.height, ds.width, path)
                self.bands = select_bands(bands, ds.count, path)
                dtypes = {ds.dtypes[b - 1] for b in self.bands}
                if len(dtypes) > 1:
                    raise InputError(f"{path}: selected bands have different pixel types {sorted(dtypes)}")
                dtype = dtypes.pop()
                check_dtype(dtype, path)
                flags = [ds.mask_flag_enums[b - 1] for b in self.bands]
                block_rows, block_cols = ds.block_shapes[self.bands[0] - 1]
                nodata = ds.nodatavals[self.bands[0] - 1]
                georeferenced = ds.crs is not None or not ds.transform.is_identity
                self.info = RasterInfo(
                    path=path,
                    format=ds.driver,
                    height=ds.height,
                    width=ds.width,
                    count=ds.count,
                    dtype=dtype,
                    band_names=tuple(ds.descriptions),
                    crs=ds.crs.to_wkt() if ds.crs else None,
                    transform=tuple(ds.transform)[:6] if georeferenced else None,
                    nodata=None if nodata is None else float(nodata),
                )
        except RasterioError as exc:
            raise InputError(f"{path} is not a raster GDAL can read: {exc}") from None
        self._mask_mode = _mask_mode(flags)
        self._pool = HandlePool(self._open)
        # A remote tiled raster is read through its decoded blocks (strips are as wide as the raster: no use).
        height, width = self.info.height, self.info.width
        tiled = location.is_remote and block_cols < width
        self._grid = BlockGrid(height, width, block_rows, block_cols) if tiled else None
        self._blocks = self._new_block_cache()

    @property
    def block_cache_bytes(self) -> int:
        """Decoded bytes kept for the neighbouring chunks' halos (a remote tiled raster; no more than the whole
        raster's pixels and validity): ``block_cache.BLOCK_CACHE_BYTES``, or 0."""
        if self._grid is None:
            return 0
        pixel_bytes = len(self.bands) * np.dtype(self.info.dtype).itemsize + 1  # + one byte of validity
        return min(BLOCK_CACHE_BYTES, self.info.height * self.info.width * pixel_bytes)

    def _new_block_cache(self) -> BlockCache | None:
        return BlockCache(self._grid, self.block_cache_bytes) if self._grid else None

    def _open(self) -> Any:
        if self._settings is not None:
            self._settings.apply()
        return open_quietly(self._gdal_path)

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        if self._blocks is None:
            data, valid = self._read_window(rows, cols)
        else:
            data, valid = self._blocks.read(rows, cols, self._read_window)
        return data, nan_free(data, valid)

    def _read_window(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity of one window, read by GDAL."""
        window = Window(cols.start, rows.start, cols.size, rows.size)
        try:
            with self._pool.handle() as ds:
                data = ds.read(self.bands, window=window)
                if self._mask_mode == "dataset":
                    valid = ds.read_masks(self.bands[0], window=window) > 0
                elif self._mask_mode == "nodata":
                    valid = _valid_where_not_nodata(data, [ds.nodatavals[b - 1] for b in self.bands])
                else:
                    valid = np.ones(data.shape[1:], dtype=bool)
        except RasterioError as exc:
            raise read_error(self.path, rows, cols, exc) from None
        return data, valid

    def read_reduced(self, shape: tuple[int, int], resampling: str) -> tuple[np.ndarray, np.ndarray]:
        """Decimated read by GDAL, which takes the overviews when the file has them. A reduced pixel is valid
        when any pixel it averages is ("average"), or when its centre pixel is ("nearest")."""
        method = {"average": Resampling.average, "nearest": Resampling.nearest}[resampling]
        out = (len(self.bands), *shape)
        try:
            with self._pool.handle() as ds:
                data = ds.read(self.bands, out_shape=out, resampling=method)
                if self._mask_mode == "all":
                    valid = np.ones(shape, dtype=bool)
                else:
                    valid = (ds.read_masks(self.bands, out_shape=out, resampling=method) > 0).any(axis=0)
        except RasterioError as exc:
            raise read_error(self.path, Span(0, self.info.height), Span(0, self.info.width), exc) from None
        return data, nan_free(data, valid)

    def close(self) -> None:
        self._pool.close()
        if self._blocks is not None:
            self._blocks.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_pool"], state["_blocks"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = HandlePool(self._open)
        self._blocks = self._new_block_cache()


def _valid_where_not_nodata(data: np.ndarray, nodata: list[float]) -> np.ndarray:
    """Pixels (rows, cols) where any band of ``data`` (bands, rows, cols) differs from its nodata value."""
    if all(value == 0 for value in nodata):
        return data.any(axis=0)  # one pass instead of a comparison and an "or" per band (the usual nodata)
    valid = np.zeros(data.shape[1:], dtype=bool)
    for band, value in zip(data, nodata, strict=True):
        valid |= ~np.isnan(band) if np.isnan(value) else band != value
    return valid


def _mask_mode(flags: list[list[MaskFlags]]) -> str:
    """How validity is known: 'all' valid, per-band 'nodata' values, or a 'dataset' mask (internal/alpha)."""
    if all(f == [MaskFlags.all_valid] for f in flags):
        return "all"
    if all(MaskFlags.nodata in f for f in flags):
        return "nodata"
    return "dataset"
