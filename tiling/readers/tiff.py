"""TIFF without georeferencing — flat images and whole-slide pyramids (Aperio SVS, NDPI, OME-TIFF, generic
pyramidal TIFF) — through tifffile, read lazily from the zarr view of one level's tiles or strips.

The zarr store does not pickle, so each reader holds only the path and level and opens the file where it lands
(a pool of handles, one per concurrent thread).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from ..errors import InputError
from ..plan import Span
from ..storage.read_cache import prefetch
from .base import HandlePool, RasterInfo, check_dtype, check_shape, nan_free, read_error, select_bands
from .resample import reduce_by_strips
from .slide import Level, check_decodable, slide_format, slide_levels
from .tiff_files import open_tiff

GDAL_NODATA_TAG = 42113


class _OpenTiff:
    """A TIFF file and the zarr array over one level of its first series."""

    def __init__(self, path: str, level: int) -> None:
        self.tif = open_tiff(path)
        self.series = self.tif.series[0]
        self.array = zarr.open_array(self.series.aszarr(level=level), mode="r")
        self.source = getattr(self.tif, "source", None)  # the fsspec file of a remote TIFF
        pages = self.series.levels[level].pages
        self._page = pages[0] if len(pages) == 1 and self.source is not None else None
        self._tiling = _tiling(self._page) if self._page is not None else None

    def prefetch(self, rows: Span, cols: Span) -> None:
        """Fetch the window's tiles of a remote file together (see ``read_cache.prefetch``)."""
        if self._page is None or self._tiling is None:
            return
        tile_rows, tile_cols, planes, down, across = self._tiling
        indices = [
            (plane * down + y) * across + x
            for plane in range(planes)
            for y in range(rows.start // tile_rows, (rows.stop - 1) // tile_rows + 1)
            for x in range(cols.start // tile_cols, (cols.stop - 1) // tile_cols + 1)
        ]
        offsets, counts = self._page.dataoffsets, self._page.databytecounts
        prefetch(self.source, [(offsets[i], offsets[i] + counts[i]) for i in indices if counts[i]])

    def close(self) -> None:
        self.tif.close()


def _tiling(page: Any) -> tuple[int, int, int, int, int] | None:
    """Tile rows and columns, sample planes, tiles down and across of a tiled 2-D ``page`` (its tiles are stored
    plane by plane, each plane row by row); None for strips or volumes."""
    if not page.is_tiled or page.imagedepth != 1:
        return None
    if page.planarconfig == 1:  # samples interleaved in each tile
        return page.chunks[0], page.chunks[1], 1, page.chunked[0], page.chunked[1]
    planes, down, across = page.chunked[-3:]
    return page.chunks[-2], page.chunks[-1], planes, down, across


class TiffReader:
    """Windowed reads of one level of a TIFF's first image series (axes YX, YXS, SYX or CYX)."""

    def __init__(self, path: str, bands: tuple[int, ...] | list[int] | None = None, level: int = 0) -> None:
        self.path, self.level = path, level
        tif = open_tiff(path)
        try:
            fmt = slide_format(tif)
            self.levels: tuple[Level, ...] = slide_levels(tif)
            series = tif.series[0].levels[level]
            axes = series.axes
            if axes not in ("YX", "YXS", "SYX", "CYX"):
                raise InputError(f"{path}: unsupported TIFF layout (axes {axes}); expected a 2-D image")
            check_decodable(path, fmt, series.keyframe)
            self._band_axis = {"YX": None, "YXS": 2, "SYX": 0, "CYX": 0}[axes]
            shape = series.shape
            height, width = (shape[0], shape[1]) if axes[0] == "Y" else (shape[1], shape[2])
            count = 1 if self._band_axis is None else shape[self._band_axis]
            check_shape(height, width, path)
            dtype = str(series.dtype)
            check_dtype(dtype, path)
            self.bands = select_bands(bands, count, path)
            nodata_tag = tif.pages.first.tags.get(GDAL_NODATA_TAG)
            self.info = RasterInfo(
                path=path,
                format=fmt,
                height=height,
                width=width,
                count=count,
                dtype=dtype,
                band_names=(None,) * count,
                nodata=float(nodata_tag.value.strip("\x00")) if nodata_tag else None,
                pixel_size_um=self.levels[level].pixel_size_um,
                level0_scale=self.levels[level].downsample,
            )
        finally:
            tif.close()
        self._pool = HandlePool(lambda: _OpenTiff(path, level))
        self._check_first_tile(fmt)

    def _check_first_tile(self, fmt: str) -> None:
        """Decode one pixel now, so that a file whose tiles cannot be decoded fails before any work."""
        try:
            with self._pool.handle() as opened:
                opened.array[(slice(0, 1),) * opened.array.ndim]
        except Exception as exc:
            self.close()
            cause = " ".join(str(exc).split()) or type(exc).__name__
            raise InputError(f"{self.path}: cannot decode the first tile of this {fmt}: {cause}") from None

    def at_level(self, level: int) -> TiffReader:
        """The same file and bands at another pyramid level."""
        return TiffReader(self.path, self.bands, level)

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
        try:
            with self._pool.handle() as opened:
                opened.prefetch(rows, cols)
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

    def read_reduced(self, shape: tuple[int, int], resampling: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole level reduced to ``shape``, computed from the coarsest pyramid level that is still at
        least as fine as ``shape`` (so a thumbnail of a slide never decodes its full resolution)."""
        height, width = shape
        finest_enough = [lv for lv in self.levels[self.level :] if lv.height >= height and lv.width >= width]
        source = max(finest_enough, key=lambda lv: lv.downsample[0] * lv.downsample[1])
        reader = self if source.index == self.level else self.at_level(source.index)
        try:
            return reduce_by_strips(reader, shape, resampling)
        finally:
            if reader is not self:
                reader.close()

    def close(self) -> None:
        self._pool.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_pool"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = HandlePool(lambda: _OpenTiff(self.path, self.level))
