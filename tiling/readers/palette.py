"""A one-band raster with a colour table (a palette-mode PNG, a paletted GeoTIFF) read as its RGB colours, as a
palette-encoded training mask needs them."""

from __future__ import annotations

import numpy as np
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError

from ..plan import Span
from ..storage import StoragePath
from .base import RasterInfo, RasterReader
from .geotiff import open_quietly


class PalettedReader:
    """A one-band paletted raster (e.g. a palette-mode PNG) read as its RGB colours."""

    def __init__(self, inner: RasterReader, colormap: dict[int, tuple[int, ...]]) -> None:
        self.inner = inner
        self.bands = (1, 2, 3)
        self.info = RasterInfo(**{**inner.info.__dict__, "count": 3})
        self._table = np.zeros((256, 3), dtype=np.uint8)
        for index, entry in colormap.items():
            if 0 <= index < 256:
                self._table[index] = entry[:3]

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        data, valid = self.inner.read(rows, cols)
        return np.moveaxis(self._table[data[0]], -1, 0), valid

    def close(self) -> None:
        self.inner.close()


def expand_palette(reader: RasterReader) -> RasterReader:
    """``reader`` itself, or its colours when it is a one-band raster with a colour table."""
    if reader.info.count != 1 or reader.info.dtype != "uint8":
        return reader
    try:
        with open_quietly(StoragePath.of(reader.info.path).gdal_path) as ds:
            if ds.colorinterp[0] != ColorInterp.palette:
                return reader
            colormap = ds.colormap(1)
    except (RasterioError, ValueError):
        return reader  # not a GDAL raster with a colour table (e.g. Zarr): read as stored
    return PalettedReader(reader, colormap)
