"""Zarr v3 output: a group with a ``labels`` and/or ``probs`` array chunked like the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..errors import OutputError
from ..plan import Span
from ..readers.base import RasterInfo
from .atomic import commit, partial_path, remove_path
from .layers import Layer


class ZarrSink:
    """A Zarr v3 group; each chunk of the run is one Zarr chunk, so threads write without a lock."""

    def __init__(
        self,
        final: Path,
        layers: list[Layer],
        info: RasterInfo,
        chunk: tuple[int, int],
        class_names: tuple[str, ...],
    ) -> None:
        self.final, self.layers = final, layers
        self.partial = partial_path(final)
        remove_path(self.partial)
        attrs = {
            "software": "tilewise",
            "class_names": list(class_names),
            "crs": info.crs,
            "transform": list(info.transform) if info.transform else None,
            "pixel_size_um": list(info.pixel_size_um) if info.pixel_size_um else None,
        }
        try:
            group = zarr.open_group(str(self.partial), mode="w", zarr_format=3, attributes=attrs)
            self._arrays = {}
            for layer in layers:
                two_d = layer.name == "labels"
                shape = (info.height, info.width) if two_d else (layer.count, info.height, info.width)
                self._arrays[layer.name] = group.create_array(
                    layer.name,
                    shape=shape,
                    chunks=chunk if two_d else (layer.count, *chunk),
                    dtype=layer.dtype,
                    fill_value=layer.nodata,
                    dimension_names=("y", "x") if two_d else ("band", "y", "x"),
                    attributes={
                        "nodata": None if np.isnan(layer.nodata) else layer.nodata,
                        "band_names": list(layer.band_names),
                        "crs": info.crs,
                        "transform": attrs["transform"],
                    },
                )
        except OSError as exc:
            raise OutputError(f"cannot create {self.partial}: {exc}") from None

    def write(self, rows: Span, cols: Span, probs: np.ndarray) -> None:
        ys, xs = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
        for layer in self.layers:
            data = layer.encode(probs)
            array = self._arrays[layer.name]
            if array.ndim == 2:
                array[ys, xs] = data[0]
            else:
                array[:, ys, xs] = data

    def commit(self) -> None:
        commit(self.partial, self.final)

    def abort(self) -> None:
        remove_path(self.partial)
