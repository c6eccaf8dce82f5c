"""Zarr arrays (v2 or v3): a (bands, y, x) or (y, x) array, a group holding one, or an OME-Zarr image."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from ..errors import InputError
from ..plan import Span
from .base import RasterInfo, check_dtype, check_shape, nan_free, read_error, select_bands
from .resample import reduce_by_strips


def _open_array(path: str) -> tuple[zarr.Array, dict[str, Any]]:
    """The image array inside ``path`` and the attributes that describe it."""
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise InputError(f"{path} is not a readable Zarr store: {exc}") from None
    if isinstance(node, zarr.Array):
        return node, dict(node.attrs)
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if multiscales:
        dataset = multiscales[0]["datasets"][0]["path"]
        return node[dataset], attrs
    arrays = sorted(name for name, _ in node.arrays())
    for preferred in ("image", "probs"):
        if preferred in arrays:
            return node[preferred], {**attrs, **node[preferred].attrs}
    if len(arrays) == 1:
        return node[arrays[0]], {**attrs, **node[arrays[0]].attrs}
    raise InputError(f"{path} is a Zarr group without an obvious image array (arrays: {arrays or 'none'})")


_TO_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}


def _ngff_pixel_size_um(attrs: dict[str, Any]) -> tuple[float, float] | None:
    """µm per pixel (y, x) of an OME-Zarr image's full-resolution level, when its axes have a length unit."""
    try:
        multiscale = attrs.get("ome", attrs)["multiscales"][0]
        axes = multiscale["axes"]
        scale = next(t["scale"] for t in multiscale["datasets"][0]["coordinateTransformations"] if t["type"] == "scale")
    except (KeyError, IndexError, StopIteration, TypeError):
        return None
    sizes = {}
    for axis, value in zip(axes, scale, strict=False):
        factor = _TO_UM.get(axis.get("unit", ""))
        if axis.get("name") in ("y", "x") and factor:
            sizes[axis["name"]] = value * factor
    return (sizes["y"], sizes["x"]) if len(sizes) == 2 else None


def _listed_pixel_size(attrs: dict[str, Any]) -> tuple[float, float] | None:
    """The ``pixel_size_um`` tilewise writes into its own Zarr outputs."""
    size = attrs.get("pixel_size_um")
    return (float(size[0]), float(size[1])) if size else None


class ZarrReader:
    """Windowed reads of a Zarr array laid out (bands, y, x) or (y, x)."""

    def __init__(self, path: str, bands: tuple[int, ...] | list[int] | None = None) -> None:
        self.path = path
        array, attrs = _open_array(path)
        if array.ndim not in (2, 3):
            raise InputError(f"{path}: expected a (bands, y, x) or (y, x) array, got shape {array.shape}")
        shape = array.shape if array.ndim == 3 else (1, *array.shape)
        count, height, width = shape
        check_shape(height, width, path)
        if count == 0:
            raise InputError(f"{path} has no bands (shape {array.shape})")
        dtype = str(array.dtype)
        check_dtype(dtype, path)
        self.bands = select_bands(bands, count, path)
        nodata = attrs.get("nodata")
        self.info = RasterInfo(
            path=path,
            format="Zarr",
            height=height,
            width=width,
            count=count,
            dtype=dtype,
            band_names=tuple(attrs.get("band_names", (None,) * count)),
            crs=attrs.get("crs"),
            transform=tuple(attrs["transform"]) if attrs.get("transform") else None,
            nodata=None if nodata is None else float(nodata),
            pixel_size_um=_ngff_pixel_size_um(attrs) or _listed_pixel_size(attrs),
        )
        self._array: zarr.Array | None = array

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        if self._array is None:
            self._array, _ = _open_array(self.path)
        ys, xs = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
        try:
            if self._array.ndim == 2:
                data = self._array[ys, xs][np.newaxis]
            else:
                index = [b - 1 for b in self.bands]
                data = self._array.get_orthogonal_selection((index, ys, xs))
        except Exception as exc:
            raise read_error(self.path, rows, cols, exc) from None
        nodata = self.info.nodata
        if nodata is None:
            valid = np.ones(data.shape[1:], dtype=bool)
        elif np.isnan(nodata):
            valid = ~np.isnan(data).all(axis=0)
        else:
            valid = (data != nodata).any(axis=0)
        return data, nan_free(data, valid)

    def read_reduced(self, shape: tuple[int, int], resampling: str) -> tuple[np.ndarray, np.ndarray]:
        return reduce_by_strips(self, shape, resampling)

    def close(self) -> None:
        self._array = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}
