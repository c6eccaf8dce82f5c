"""GeoTIFF output: tiled, deflate-compressed, BigTIFF when large, with the input's CRS and transform."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from ..errors import OutputError
from ..plan import Span
from ..readers.base import RasterInfo
from .atomic import commit, partial_path, remove_path
from .encode import UINT8_PROB_SCALE
from .layers import Layer

BLOCK = 256
#: Label colours for QGIS and other viewers (class 0 is transparent-looking black).
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


class GeoTiffSink:
    """One GeoTIFF written chunk by chunk by several threads (writes are serialised by a lock)."""

    def __init__(self, final: Path, layer: Layer, info: RasterInfo, class_names: tuple[str, ...]) -> None:
        self.final, self.layer = final, layer
        self.partial = partial_path(final)
        remove_path(self.partial)
        profile = {
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
        if info.crs:
            profile["crs"] = info.crs
        if info.transform:
            profile["transform"] = Affine(*info.transform)
        self._lock = threading.Lock()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self.partial, "w", **profile)
        except RasterioError as exc:
            raise OutputError(f"cannot create {self.partial}: {exc}") from None
        for band, name in enumerate(layer.band_names, start=1):
            self._ds.set_band_description(band, name)
        self._ds.update_tags(class_names=",".join(class_names), software="tilewise")
        if layer.name == "labels":
            self._ds.write_colormap(1, {i: (*PALETTE[i % len(PALETTE)], 255) for i in range(len(class_names))})
        elif layer.dtype == "uint8":
            self._ds.scales = (1.0 / UINT8_PROB_SCALE,) * layer.count

    def write(self, rows: Span, cols: Span, probs: np.ndarray) -> None:
        data = self.layer.encode(probs)
        window = Window(cols.start, rows.start, cols.size, rows.size)
        with self._lock:
            self._ds.write(data, window=window)

    def commit(self) -> None:
        self._ds.close()
        commit(self.partial, self.final)

    def abort(self) -> None:
        if not self._ds.closed:
            self._ds.close()
        remove_path(self.partial)
