"""What every reader provides: a description of the raster and windowed reads with a validity mask."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import InputError
from ..plan import Span


def round_um(size: float) -> float:
    """A pixel size in µm to the precision the data support (1e-6 µm): sizes derived by multiplying and
    dividing must not come out as 0.9999999999999999."""
    return round(size, 6)


SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32")


@dataclass(frozen=True)
class RasterInfo:
    """Shape, type and georeferencing of a raster, as read from its header."""

    path: str
    format: str
    height: int
    width: int
    count: int
    dtype: str
    band_names: tuple[str | None, ...] = ()
    crs: str | None = None
    transform: tuple[float, float, float, float, float, float] | None = None
    nodata: float | None = None
    pixel_size_um: tuple[float, float] | None = None
    #: Full-resolution (level-0) pixels per pixel of this grid along (rows, cols): a slide read at a reduced
    #: level or resampled; (1, 1) for a raster read as it is.
    level0_scale: tuple[float, float] = (1.0, 1.0)

    @property
    def crs_name(self) -> str | None:
        """The CRS as people name it (``EPSG:32618``), or the start of its WKT when it has no EPSG code."""
        if not self.crs:
            return None
        from rasterio.crs import CRS

        crs = CRS.from_wkt(self.crs)
        return crs.to_string() if crs.to_epsg() else crs.to_wkt()[:80] + "…"


class RasterReader(Protocol):
    """A raster opened for windowed reads of selected bands.

    Readers are picklable (they reopen their file where they land) and safe to call from several threads.
    """

    info: RasterInfo
    bands: tuple[int, ...]

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of the selected bands (bands, rows, cols) in the file's dtype, and a (rows, cols) bool mask
        that is True where the pixel is valid (not nodata, not masked, not NaN)."""
        ...

    def read_reduced(self, shape: tuple[int, int], resampling: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole raster reduced to ``shape`` (rows, cols) over the same extent, by ``resampling``
        ("average" or "nearest"), from overviews or pyramid levels where the format has them and otherwise
        streamed in strips: never the whole raster in memory. Returns pixels and validity like ``read``; a
        reduced pixel is valid when any pixel it averages is (or, for "nearest", its centre pixel)."""
        ...

    def close(self) -> None: ...


def select_bands(bands: tuple[int, ...] | list[int] | None, count: int, path: str) -> tuple[int, ...]:
    """Validate 1-based band numbers against the raster's band count (None selects all bands)."""
    if bands is None or len(bands) == 0:
        return tuple(range(1, count + 1))
    for b in bands:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= count:
            raise InputError(f"band {b} does not exist in {path}, which has {count} band(s) (bands count from 1)")
    return tuple(int(b) for b in bands)


def check_dtype(dtype: str, path: str) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{path} has pixel type {dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")


def check_shape(height: int, width: int, path: str) -> None:
    if height <= 0 or width <= 0:
        raise InputError(f"{path} has a zero dimension ({height} x {width} pixels)")


def read_error(path: str, rows: Span, cols: Span, exc: BaseException) -> InputError:
    """The error for a window that could not be read (a damaged file, found mid-run)."""
    where = f"rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop}"
    return InputError(f"failed to read {path} at {where}: {' '.join(str(exc).split())}")


def nan_free(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``valid`` with pixels holding NaN in any band cleared (a no-op for integer data)."""
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data).any(axis=0)
    return valid


class HandlePool:
    """Open file handles shared by threads, one thread at a time per handle.

    GDAL datasets and TIFF file handles must not be used by two threads at once; a pool keeps at most one
    handle per concurrent reader instead of one per task.
    """

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._free: list[Any] = []
        self._all: list[Any] = []

    @contextmanager
    def handle(self) -> Iterator[Any]:
        with self._lock:
            handle = self._free.pop() if self._free else None
        if handle is None:
            handle = self._opener()
            with self._lock:
                self._all.append(handle)
        try:
            yield handle
        finally:
            with self._lock:
                self._free.append(handle)

    def close(self) -> None:
        with self._lock:
            for handle in self._all:
                handle.close()
            self._all.clear()
            self._free.clear()
