"""``--preview out.png``: a small picture of the input with the classes (or the valid-area mask) over it.

Nothing is read at full resolution: the input comes from ``read_reduced`` (pyramid levels of a slide, overviews
or decimated reads of a GDAL raster, strips otherwise), and the labels are read back from the written output
the same way, at the same reduced size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..masking import CoarseMask
from ..readers import RasterReader, open_raster
from .atomic import check_destination, commit, remove_path
from .encode import NODATA_UINT8, NODATA_UINT32
from .geotiff import PALETTE
from .write_errors import os_write_errors

#: Opacity of class colours over the image; pixels outside the valid area are dimmed to this brightness.
CLASS_ALPHA = 0.5
DIM = 0.35
#: The colour objects are outlined in.
OUTLINE = (255, 255, 0)


def preview_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The preview's (rows, cols): the raster reduced by a whole factor so its longest side is ≤ ``size``."""
    scale = max(1, math.ceil(max(height, width) / size))
    return math.ceil(height / scale), math.ceil(width / scale)


def display_rgb(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) uint8 for display: the first three bands (or one band as grey); other than 8-bit
    pixels are stretched between the 2nd and 98th percentiles of the valid pixels; invalid pixels are black."""
    bands = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    if bands.dtype == np.uint8:
        rgb = bands.astype(np.float32)
    else:
        rgb = np.zeros(bands.shape, np.float32)
        for i, band in enumerate(bands.astype(np.float32)):
            values = band[valid & np.isfinite(band)]
            lo, hi = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
            rgb[i] = np.clip((band - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    rgb[:, ~valid] = 0
    return np.moveaxis(np.nan_to_num(rgb), 0, 2)


def _stretch_mask(mask: CoarseMask, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.height / shape[0]) // mask.scale, mask.array.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.width / shape[1]) // mask.scale, mask.array.shape[1] - 1)
    return mask.array[np.ix_(rows.astype(np.int64), cols.astype(np.int64))]


def overlay(rgb: np.ndarray, labels: np.ndarray | None, inside: np.ndarray | None) -> np.ndarray:
    """Class colours (classes ≥ 1) blended over ``rgb``; nodata labels, or pixels outside ``inside``, dimmed."""
    out = rgb.astype(np.float32)
    if labels is not None:
        for value in np.unique(labels):
            if value in (0, NODATA_UINT8):
                continue
            where = labels == value
            colour = np.array(PALETTE[int(value) % len(PALETTE)], np.float32)
            out[where] = (1 - CLASS_ALPHA) * out[where] + CLASS_ALPHA * colour
        outside = labels == NODATA_UINT8
    else:
        outside = np.zeros(rgb.shape[:2], bool) if inside is None else ~inside
    out[outside] *= DIM
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def outlines(ids: np.ndarray) -> np.ndarray:
    """Pixels of an object (id > 0) with a 4-neighbour of another id: each object's inner outline."""
    edge = np.zeros(ids.shape, bool)
    differs_down, differs_right = ids[1:] != ids[:-1], ids[:, 1:] != ids[:, :-1]
    edge[1:] |= differs_down
    edge[:-1] |= differs_down
    edge[:, 1:] |= differs_right
    edge[:, :-1] |= differs_right
    return edge & (ids > 0) & (ids != NODATA_UINT32)


def _read_map(path: str | os.PathLike[str], shape: tuple[int, int], nodata: int) -> np.ndarray:
    """A label or instance raster reduced to ``shape`` by its nearest pixels; nodata where unknown."""
    reader = open_raster(path, bands=[1])
    try:
        values, known = reader.read_reduced(shape, "nearest")
    finally:
        reader.close()
    return np.where(known, values[0], nodata)


def _legend(image: Image.Image, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    draw = ImageDraw.Draw(image)
    y = 4
    for value in np.unique(labels):
        if value in (0, NODATA_UINT8):
            continue
        name = class_names[value] if value < len(class_names) else f"class {value}"
        colour = PALETTE[int(value) % len(PALETTE)]
        draw.rectangle((4, y, 16, y + 12), fill=colour, outline=(255, 255, 255))
        draw.text((21, y), name, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
        y += 16


def write_preview(
    dest: str | os.PathLike[str],
    reader: RasterReader,
    labels: str | os.PathLike[str] | None,
    mask: CoarseMask | None,
    class_names: tuple[str, ...],
    size: int = 1024,
    overwrite: bool = False,
    instances: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the preview PNG of the raster ``reader`` reads, with the label raster at ``labels`` (same grid)
    coloured over it, or else the ``mask``, and the objects of the instance raster at ``instances`` outlined."""
    dest = Path(dest)
    check_destination(dest, overwrite)
    shape = preview_shape(reader.info.height, reader.info.width, size)
    data, valid = reader.read_reduced(shape, "average")
    rgb = display_rgb(data, valid)
    label_map = None if labels is None else _read_map(labels, shape, NODATA_UINT8).astype(np.uint8)
    inside = None if mask is None else _stretch_mask(mask, shape)
    pixels = overlay(rgb, label_map, inside)
    if instances is not None:
        pixels[outlines(_read_map(instances, shape, NODATA_UINT32))] = OUTLINE
    image = Image.fromarray(pixels)
    if label_map is not None:
        _legend(image, label_map, class_names)
    partial = dest.with_name(dest.name + ".partial")
    try:
        with os_write_errors(dest):
            image.save(partial, format="PNG")
            commit(partial, dest)
    except BaseException:
        remove_path(partial)
        raise
    return dest
