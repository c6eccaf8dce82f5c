"""Pyramid levels built from level 0 by repeated 2× downsampling, block by block (never the whole image).

Labels are downsampled by nearest neighbour (the top-left pixel of each 2×2 block), so every level still holds
real class ids; probabilities by the mean of the valid pixels of each 2×2 block (nodata where none is valid).
"""

from __future__ import annotations

import math

import numpy as np
import zarr

from .layers import Layer
from .workstore import ARRAY_CONFIG, COMPRESSORS

#: The smallest level's longer side is at most this many pixels.
MIN_LEVEL_SIZE = 256


def level_shapes(height: int, width: int, min_size: int = MIN_LEVEL_SIZE) -> list[tuple[int, int]]:
    """(height, width) of each level, level 0 first, halving (rounding up) until both sides fit ``min_size``."""
    shapes = [(height, width)]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def downsample_nearest(block: np.ndarray) -> np.ndarray:
    """Every second pixel of the last two axes (starting at 0)."""
    return block[..., ::2, ::2]


def downsample_mean(block: np.ndarray, nodata: float) -> np.ndarray:
    """2×2 mean of the valid pixels over the last two axes; ``nodata`` (or NaN) where none is valid.

    Integer data (uint8 probabilities) is averaged in float and rounded back.
    """
    *lead, h, w = block.shape
    data = block.astype(np.float32)
    invalid = np.isnan(data) if np.isnan(nodata) else data == nodata
    data[invalid] = 0.0
    weight = (~invalid).astype(np.float32)
    if h % 2 or w % 2:  # pad odd edges with invalid pixels
        pad = [(0, 0)] * len(lead) + [(0, h % 2), (0, w % 2)]
        data, weight = np.pad(data, pad), np.pad(weight, pad)
    shape = (*lead, data.shape[-2] // 2, 2, data.shape[-1] // 2, 2)
    total = data.reshape(shape).sum(axis=(-3, -1))
    count = weight.reshape(shape).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    if np.issubdtype(block.dtype, np.integer):
        out = np.rint(np.nan_to_num(mean, nan=nodata)).astype(block.dtype)
        out[count == 0] = block.dtype.type(nodata)
        return out
    mean[count == 0] = nodata
    return mean.astype(block.dtype)


def downsample(block: np.ndarray, labels: bool, nodata: float) -> np.ndarray:
    return downsample_nearest(block) if labels else downsample_mean(block, nodata)


def build_level(source: zarr.Array, target: zarr.Array, labels: bool, nodata: float) -> None:
    """Fill ``target`` (half the size of ``source`` in y and x) one target chunk at a time."""
    chunk_h, chunk_w = target.chunks[-2:]
    height, width = target.shape[-2:]
    for y in range(0, height, chunk_h):
        for x in range(0, width, chunk_w):
            ys = slice(2 * y, min(2 * (y + chunk_h), source.shape[-2]))
            xs = slice(2 * x, min(2 * (x + chunk_w), source.shape[-1]))
            block = downsample(source[..., ys, xs], labels, nodata)
            target[..., y : y + block.shape[-2], x : x + block.shape[-1]] = block


def build_nearest_level(source: zarr.Array, target: zarr.Array) -> None:
    """Fill ``target`` from ``source`` (both (y, x)) by nearest neighbour for any size ratio, block by block.

    Target pixel i takes source pixel floor(i · source/target): the top-left pixel of its block for a factor
    of 2, as ``downsample_nearest``; other ratios (a source pyramid's floor-halved levels) follow the same rule.
    """
    (src_h, src_w), (height, width) = source.shape, target.shape
    chunk_h, chunk_w = target.chunks
    for y in range(0, height, chunk_h):
        rows = (np.arange(y, min(y + chunk_h, height)) * src_h) // height
        for x in range(0, width, chunk_w):
            cols = (np.arange(x, min(x + chunk_w, width)) * src_w) // width
            block = source[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            target[y : y + rows.size, x : x + cols.size] = block[np.ix_(rows - rows[0], cols - cols[0])]


def add_level(group: zarr.Group, name: str, source: zarr.Array, shape: tuple[int, int], layer: Layer) -> zarr.Array:
    """Level ``name`` of ``group``: ``source`` halved to ``shape`` (replacing one a failed assembly left)."""
    target = group.create_array(
        name,
        shape=(*source.shape[:-2], *shape),
        chunks=source.chunks,
        dtype=source.dtype,
        fill_value=layer.nodata,
        compressors=COMPRESSORS,
        config=ARRAY_CONFIG,
        dimension_names=source.metadata.dimension_names,
        overwrite=True,
    )
    build_level(source, target, labels=layer.is_map, nodata=layer.nodata)
    return target
