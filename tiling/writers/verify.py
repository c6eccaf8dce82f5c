"""A cheap check of an assembled output before it is moved into place: it opens, every pyramid level has the
size it should, and the last tile of every level decodes (a file cut short loses its last tiles first).

A failed check raises ``WriteFailure``: a file that fails it never reaches the output path.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import zarr
from rasterio.windows import Window

from ..errors import WriteFailure
from ..readers.geotiff import open_quietly
from .write_errors import gdal_write_errors, named_errno

Shape = tuple[int, int]


def _failed(path: Path, problem: str) -> WriteFailure:
    code = named_errno(problem) or errno.EIO
    return WriteFailure(path, code, f"the written file fails its check ({problem})")


def _halvings(size: int, factor: int) -> set[int]:
    """What a reduced level of ``size`` by ``factor`` may measure: GDAL rounds down, tilewise up."""
    return {size // factor, -(-size // factor)}


def verify_geotiff(path: Path, shape: Shape, count: int, dtype: str, overview_block: int | None) -> None:
    """``path`` is a GeoTIFF of ``shape`` (rows, cols) with ``count`` bands of ``dtype``; with
    ``overview_block`` (a COG) its overviews halve until the last fits in one block, each of the right size."""
    try:
        with gdal_write_errors(path):
            with open_quietly(path) as ds:
                found = ((ds.height, ds.width), ds.count, ds.dtypes[0])
                if found != (shape, count, dtype):
                    raise _failed(path, f"holds {found}, expected {(shape, count, dtype)}")
                factors = ds.overviews(1)
                _read_last_block(ds)
            levels = _overview_levels(path, len(factors))
    except WriteFailure as failure:
        if failure.detail.startswith("the written file"):
            raise
        raise _failed(path, failure.detail or failure.args[0]) from None
    if overview_block is None:
        if levels:
            raise _failed(path, f"has {len(levels)} overviews, expected none")
        return
    _check_reduced(path, shape, levels, overview_block)


def _overview_levels(path: Path, count: int) -> list[Shape]:
    shapes = []
    for level in range(count):
        with open_quietly(path, overview_level=level) as overview:
            shapes.append((overview.height, overview.width))
            _read_last_block(overview)
    return shapes


def _read_last_block(ds: object) -> None:
    block_rows, block_cols = ds.block_shapes[0]  # type: ignore[attr-defined]
    row = (ds.height - 1) // block_rows * block_rows  # type: ignore[attr-defined]
    col = (ds.width - 1) // block_cols * block_cols  # type: ignore[attr-defined]
    window = Window(col, row, ds.width - col, ds.height - row)  # type: ignore[attr-defined]
    ds.read(window=window)  # type: ignore[attr-defined]


def _check_reduced(path: Path, shape: Shape, levels: Sequence[Shape], block: int) -> None:
    for k, (rows, cols) in enumerate(levels, start=1):
        if rows not in _halvings(shape[0], 2**k) or cols not in _halvings(shape[1], 2**k):
            raise _failed(path, f"overview {k} is {rows} x {cols} for a {shape[0]} x {shape[1]} image")
    last = levels[-1] if levels else shape
    above = levels[-2] if len(levels) > 1 else shape
    if max(last) > block or (levels and max(above) <= block):
        raise _failed(path, f"has {len(levels)} overview(s); they should end at the first that fits {block} px")


def verify_ome_tiff(path: Path, shapes: Sequence[tuple[int, ...]], dtype: str) -> None:
    """``path`` is a pyramidal OME-TIFF whose levels have ``shapes`` (level 0 first) and whose last tile of
    each level decodes."""
    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            found = [tuple(level.shape) for level in levels]
            if found != [tuple(s) for s in shapes]:
                raise _failed(path, f"levels {found}, expected {[tuple(s) for s in shapes]}")
            for level in range(len(levels)):
                array = zarr.open_array(tif.series[0].aszarr(level=level), mode="r")
                if str(array.dtype) != dtype:
                    raise _failed(path, f"level {level} holds {array.dtype}, expected {dtype}")
                np.asarray(array[(slice(-1, None),) * array.ndim])
    except WriteFailure:
        raise
    except Exception as exc:  # tifffile raises many types for a damaged file
        raise _failed(path, " ".join(str(exc).split()) or type(exc).__name__) from None


def verify_zarr(path: Path, group: zarr.Group, arrays: dict[str, tuple[int, ...]]) -> None:
    """Every array of ``arrays`` (path in ``group`` → shape) is there with its shape and its last chunk decodes."""
    try:
        for name, shape in arrays.items():
            array = group[name]
            if not isinstance(array, zarr.Array) or tuple(array.shape) != tuple(shape):
                raise _failed(path, f"{name} is {getattr(array, 'shape', 'not an array')}, expected {shape}")
            np.asarray(array[(slice(-1, None),) * array.ndim])
    except WriteFailure:
        raise
    except Exception as exc:
        raise _failed(path, " ".join(str(exc).split()) or type(exc).__name__) from None
