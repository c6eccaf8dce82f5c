"""Resampling of a reader onto another pixel grid (``--mpp`` between pyramid levels, or finer than the finest).

Downsampling (``f`` ≥ 1, fractional allowed) averages areas: output pixel ``i`` covers source pixels
``[i·f, (i+1)·f)``, weighted by how much of each lies inside, counting only valid source pixels. Upsampling
(``f`` < 1, reading finer than the finest level) interpolates bilinearly between the two source pixels nearest
the output pixel's centre.
Each output pixel is computed from global coordinates only, with the same operations in the same order
whatever window it is read in, so reads in the resampled grid are exact and chunk-invariant.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ..plan import Span
from .base import RasterInfo, RasterReader, round_um

#: Bytes of float32 source pixels resampled at a time (a read is cut into strips of output rows).
STRIP_BYTES = 64 * 2**20
#: A resampled pixel (in the grid the model reads) is valid when at least this share of its area is valid.
MIN_VALID_AREA = 0.5
#: A pixel of a reduced read (thumbnails, masks) is valid when any pixel under it is, as GDAL's masks are.
ANY_VALID_AREA = 1e-6


def resampled_length(source: int, factor: float) -> int:
    """Pixels along an axis of ``source`` pixels reduced by ``factor`` (rounded to nearest, at least 1)."""
    return max(1, math.floor(source / factor + 0.5))


def area_weights(start: int, stop: int, factor: float, source: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (``stop - start``, K) of output pixels ``start:stop`` along one axis.

    Weights of a row sum to 1 (float32); entries beyond the source's end have weight 0 and a clipped index.
    """
    i = np.arange(start, stop, dtype=np.float64)
    lo, hi = i * factor, np.minimum((i + 1) * factor, source)
    first = np.floor(lo).astype(np.int64)
    k = math.ceil(factor) + 1
    index = first[:, None] + np.arange(k)[None, :]
    overlap = np.clip(np.minimum(index + 1, hi[:, None]) - np.maximum(index, lo[:, None]), 0.0, None)
    weights = overlap / overlap.sum(axis=1, keepdims=True)
    return np.minimum(index, source - 1), weights.astype(np.float32)


def interpolation_weights(start: int, stop: int, factor: float, source: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (``stop - start``, 2) of output pixels ``start:stop`` along one axis, upsampled
    by ``1 / factor``: the two source pixels around each output pixel's centre, clamped at the edges."""
    centre = (np.arange(start, stop, dtype=np.float64) + 0.5) * factor - 0.5
    low = np.floor(centre)
    upper = (centre - low).astype(np.float32)
    index = np.clip(np.stack([low, low + 1], axis=1).astype(np.int64), 0, source - 1)
    return index, np.stack([1 - upper, upper], axis=1)


def axis_weights(start: int, stop: int, factor: float, source: int) -> tuple[np.ndarray, np.ndarray]:
    """Area weights to downsample, interpolation weights to upsample."""
    if factor >= 1:
        return area_weights(start, stop, factor, source)
    return interpolation_weights(start, stop, factor, source)


def _weighted(data: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Σ_k weights[:, k] · data[index[:, k]] along ``axis`` (−2 rows or −1 columns), in a fixed order."""
    out = None
    for k in range(index.shape[1]):
        taken = np.take(data, index[:, k], axis=axis)
        w = weights[:, k][:, None] if axis == -2 else weights[:, k]
        term = taken * w
        out = term if out is None else np.add(out, term, out=out)
    assert out is not None
    return out


def resample_window(
    data: np.ndarray,
    valid: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray],
    dtype: np.dtype[Any],
    min_area: float = MIN_VALID_AREA,
) -> tuple[np.ndarray, np.ndarray]:
    """Area-average (bands, h, w) source pixels with row/column (index, weight) tables whose indices are
    relative to ``data``, over the valid pixels only; returns the resampled pixels in ``dtype`` and their
    validity (at least ``min_area`` of the pixel's area valid)."""
    fraction = valid.astype(np.float32)
    values = np.where(valid, data, 0).astype(np.float32)
    area = _weighted(_weighted(fraction, *rows, axis=-2), *cols, axis=-1)
    total = _weighted(_weighted(values, *rows, axis=-2), *cols, axis=-1)
    ok = area >= min_area
    out = np.divide(total, area, out=np.zeros_like(total), where=ok)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype), ok


class ResampledReader:
    """A reader seen on a grid ``factor`` = (fy, fx) times coarser (area average), or finer for factors below 1
    (bilinear); reads are in that grid."""

    def __init__(self, base: RasterReader, factor: tuple[float, float]) -> None:
        fy, fx = factor
        if not (fy > 0 and fx > 0):
            raise ValueError(f"resampling factors must be positive, got {factor}")
        self.base, self.factor, self.bands = base, (float(fy), float(fx)), base.bands
        info = base.info
        transform = None
        if info.transform is not None:
            a, b, c, d, e, f = info.transform
            transform = (a * fx, b * fy, c, d * fx, e * fy, f)
        size = info.pixel_size_um
        pixel = None if size is None else (round_um(size[0] * fy), round_um(size[1] * fx))
        self.info: RasterInfo = replace(
            info,
            height=resampled_length(info.height, fy),
            width=resampled_length(info.width, fx),
            transform=transform,
            pixel_size_um=pixel,
            level0_scale=(info.level0_scale[0] * fy, info.level0_scale[1] * fx),
        )

    @property
    def levels(self) -> tuple[Any, ...]:
        return tuple(getattr(self.base, "levels", ()))

    @property
    def level(self) -> int | None:
        return getattr(self.base, "level", None)

    def read(self, rows: Span, cols: Span) -> tuple[np.ndarray, np.ndarray]:
        fy, fx = self.factor
        src_h, src_w = self.base.info.height, self.base.info.width
        col_index, col_weights = axis_weights(cols.start, cols.stop, fx, src_w)
        c0, c1 = int(col_index.min()), int(col_index.max()) + 1
        dtype = np.dtype(self.info.dtype)
        bytes_per_row = max(1, math.ceil(fy) * (c1 - c0) * len(self.bands) * 4)
        strip = max(1, STRIP_BYTES // bytes_per_row)
        data = np.empty((len(self.bands), rows.size, cols.size), dtype=dtype)
        valid = np.empty((rows.size, cols.size), dtype=bool)
        for start in range(rows.start, rows.stop, strip):
            stop = min(start + strip, rows.stop)
            row_index, row_weights = axis_weights(start, stop, fy, src_h)
            r0, r1 = int(row_index.min()), int(row_index.max()) + 1
            source, source_valid = self.base.read(Span(r0, r1), Span(c0, c1))
            out, ok = resample_window(
                source, source_valid, (row_index - r0, row_weights), (col_index - c0, col_weights), dtype
            )
            data[:, start - rows.start : stop - rows.start] = out
            valid[start - rows.start : stop - rows.start] = ok
        return data, valid

    def read_reduced(self, shape: tuple[int, int], resampling: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole raster at ``shape``: the extent is the base's, so the base's best way serves, unless
        ``shape`` is finer than the base (an upsampled read), which this reader's own pixels serve."""
        if shape[0] <= self.base.info.height and shape[1] <= self.base.info.width:
            return self.base.read_reduced(shape, resampling)  # type: ignore[attr-defined]
        return reduce_by_strips(self, shape, resampling)

    def close(self) -> None:
        self.base.close()


#: How a reduced read combines source pixels: area average (images, masks) or the centre pixel (labels).
REDUCTIONS = ("average", "nearest")


def _reduction(out: int, source: int, resampling: str) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) tables mapping ``out`` pixels onto ``source`` pixels covering the same extent."""
    factor = source / out
    if resampling == "average":
        return area_weights(0, out, factor, source)
    index = np.minimum(np.floor((np.arange(out) + 0.5) * factor).astype(np.int64), source - 1)
    return index[:, None], np.ones((out, 1), np.float32)


def reduce_by_strips(reader: RasterReader, shape: tuple[int, int], resampling: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole raster of ``reader`` reduced to ``shape`` (rows, cols), read in strips of rows so that
    memory stays a strip plus the output, whatever the raster's size. A reduced pixel is valid when any
    source pixel it averages is ("average"), or when its centre pixel is ("nearest")."""
    if resampling not in REDUCTIONS:
        raise ValueError(f"unknown reduction {resampling!r}")
    height, width = reader.info.height, reader.info.width
    out_h, out_w = shape
    if out_h > height or out_w > width:
        raise ValueError(f"cannot reduce {height} x {width} pixels to a larger {out_h} x {out_w}")
    row_index, row_weights = _reduction(out_h, height, resampling)
    cols = _reduction(out_w, width, resampling)
    dtype = np.dtype(reader.info.dtype)
    data = np.empty((len(reader.bands), out_h, out_w), dtype=dtype)
    valid = np.empty((out_h, out_w), dtype=bool)
    rows_per_out = math.ceil(height / out_h) + 1
    strip = max(1, STRIP_BYTES // max(1, rows_per_out * width * len(reader.bands) * 4))
    for start in range(0, out_h, strip):
        stop = min(start + strip, out_h)
        index, weights = row_index[start:stop], row_weights[start:stop]
        r0, r1 = int(index.min()), int(index.max()) + 1
        source, source_valid = reader.read(Span(r0, r1), Span(0, width))
        data[:, start:stop], valid[start:stop] = resample_window(
            source, source_valid, (index - r0, weights), cols, dtype, ANY_VALID_AREA
        )
    return data, valid
