"""Plain (non-georeferenced) TIFF through tifffile, read lazily from the zarr view of its tiles or strips."""

from __future__ import annotations

from typing import Any

import numpy as np
import tifffile
import zarr

from ..errors import InputError
from ..plan import Span
from .base import HandlePool, RasterInfo, check_dtype, check_shape, nan_free, read_error, select_bands

GDAL_NODATA_TAG = 42113


class _OpenTiff:
    """A TIFF file and the zarr array over its first series' full-resolution level."""

    def __init__(self, path: str) -> None:
        self.tif = tifffile.TiffFile(path)
        self.series = self.tif.series[0]
        self.array = zarr.open_array(self.series.aszarr(level=0), mode="r")

    def close(self) -> None:
        self.tif.close()


class TiffReader:
    """Windowed reads of a TIFF's first image series (axes YX, YXS, SYX or CYX)."""

    def __init__(self, path: str, bands: tuple[int, ...] | list[int] | None = None) -> None:
        self.path = path
        try:
            opened = _OpenTiff(path)
        except Exception as exc:  # tifffile raises many types for damaged files
            raise InputError(f"{path} is not a readable TIFF: {exc}") from None
        try:
            series, page = opened.series, opened.tif.pages.first
            axes = series.axes
            if axes not in ("YX", "YXS", "SYX", "CYX"):
                raise InputError(f"{path}: unsupported TIFF layout (axes {axes}); expected a 2-D image")
            self._band_axis = {"YX": None, "YXS": 2, "SYX": 0, "CYX": 0}[axes]
            shape = series.shape
            height, width = (shape[0], shape[1]) if axes[0] == "Y" else (shape[1], shape[2])
            count = 1 if self._band_axis is None else shape[self._band_axis]
            check_shape(height, width, path)
            dtype = str(series.dtype)
            check_dtype(dtype, path)
            self.bands = select_bands(bands, count, path)
            nodata_tag = page.tags.get(GDAL_NODATA_TAG)
            self.info = RasterInfo(
                path=path,
                format="TIFF",
                height=height,
                width=width,
                count=count,
                dtype=dtype,
                band_names=(None,) * count,
                nodata=float(nodata_tag.value.strip("\x00")) if nodata_tag else None,
                pixel_size_um=_pixel_size_um(page),
            )
        finally:
            opened.close()
        self._pool = HandlePool(lambda: _OpenTiff(path))

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
        try:
            with self._pool.handle() as opened:
                if self._band_axis is None:
                    data = opened.array[ys, xs][np.newaxis]
                elif self._band_axis == 2:
                    data = np.moveaxis(opened.array[ys, xs, :], 2, 0)
                else:
                    data = opened.array[:, ys, xs]
        except Exception as exc:
            raise read_error(self.path, rows, cols, exc) from None
        data = np.ascontiguousarray(data[[b - 1 for b in self.bands]])
        nodata = self.info.nodata
        if nodata is None:
            valid = np.ones(data.shape[1:], dtype=bool)
        elif np.isnan(nodata):
            valid = ~np.isnan(data).all(axis=0)
        else:
            valid = (data != nodata).any(axis=0)
        return data, nan_free(data, valid)

    def close(self) -> None:
        self._pool.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_pool"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = HandlePool(lambda: _OpenTiff(self.path))


def _pixel_size_um(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """µm per pixel (y, x) from the TIFF resolution tags, when they state a physical unit."""
    unit = page.tags.get("ResolutionUnit")
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    if per_unit_um is None:
        return None

    def size(tag: tifffile.TiffTag) -> float | None:
        num, den = tag.value
        return per_unit_um * den / num if num else None

    y, x = size(yres), size(xres)
    return (y, x) if y and x else None
