"""Valid-area masks: where a run computes, on a coarse grid over the raster it reads.

A ``CoarseMask`` pixel (i, j) stands for raster pixels ``[i·s, (i+1)·s) × [j·s, (j+1)·s)`` (``s`` = scale).
Three sources make one:

- ``tissue``: Otsu's threshold on saturation (or grey level) of a low-resolution read, then a small
  morphological clean-up — glass is bright and grey, stained tissue is coloured or dark;
- a mask raster (non-zero = compute), warped onto the grid when both it and the input are georeferenced,
  otherwise stretched over the input's extent (their aspect ratios must agree);
- ``nodata``: the input's own validity, reduced so that a coarse pixel is valid when any pixel under it is.

The mask selects where tiles run and which output pixels are written; it never changes what the model sees.
Each chunk task gets only its crop of the mask (``CoarseMask.crop``), never the whole mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects

from .errors import InputError, OptionError
from .plan import Span
from .readers import RasterReader, open_raster

MASK_KINDS = ("none", "tissue", "nodata")
TISSUE_CHANNELS = ("saturation", "grey")
#: Default longest side of the mask grid (the scale is the smallest power of two that fits).
MASK_MAX_SIDE = 2048
#: A mask pixel must be at most this fraction of a tile's side, so tile valid fractions stay meaningful.
MASK_PER_TILE = 8
#: Clean-up of the tissue mask, in mask pixels: closing radius, and specks / holes smaller than this area.
CLOSING_RADIUS = 2
SPECK_AREA = 32
#: Aspect ratios of a non-georeferenced mask raster and the input may differ by this much (relative).
ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class MaskCrop:
    """The part of a coarse mask under one chunk's window; small enough to travel with the chunk task."""

    scale: int
    row0: int
    col0: int
    array: np.ndarray

    def any(self) -> bool:
        return bool(self.array.any())

    def expand(self, rows: Span, cols: Span) -> np.ndarray:
        """The mask at full resolution over raster ``rows`` × ``cols`` (False past the mask's edge)."""
        padded = np.pad(self.array, ((0, 1), (0, 1)), constant_values=False)
        h, w = self.array.shape
        r = np.clip(np.arange(rows.start, rows.stop) // self.scale - self.row0, -1, h)
        c = np.clip(np.arange(cols.start, cols.stop) // self.scale - self.col0, -1, w)
        r[r < 0], c[c < 0] = h, w  # before the crop: the False padding
        return padded[np.ix_(r, c)]


@dataclass(frozen=True)
class CoarseMask:
    """A boolean mask over a ``height`` × ``width`` raster on a grid ``scale`` times coarser."""

    array: np.ndarray
    scale: int
    height: int
    width: int
    source: str

    def __post_init__(self) -> None:
        expected = (math.ceil(self.height / self.scale), math.ceil(self.width / self.scale))
        if self.array.shape != expected or self.array.dtype != bool:
            raise ValueError(f"mask of shape {self.array.shape} ({self.array.dtype}); expected {expected}, bool")

    @property
    def valid_fraction(self) -> float:
        """Share of the raster's pixels inside the mask (edge cells count for the pixels they cover)."""
        s = self.scale
        rows = np.full(self.array.shape[0], s, dtype=np.int64)
        cols = np.full(self.array.shape[1], s, dtype=np.int64)
        rows[-1], cols[-1] = self.height - s * (len(rows) - 1), self.width - s * (len(cols) - 1)
        return float(rows @ self.array.astype(np.int64) @ cols) / (self.height * self.width)

    def crop(self, rows: Span, cols: Span) -> MaskCrop:
        """The mask cells under raster ``rows`` × ``cols`` (which may reach past the raster)."""
        s = self.scale
        r0, c0 = rows.start // s, cols.start // s
        part = self.array[r0 : math.ceil(rows.stop / s), c0 : math.ceil(cols.stop / s)]
        return MaskCrop(s, r0, c0, part.copy())


def mask_scale(height: int, width: int, tile: int, max_side: int = MASK_MAX_SIDE) -> int:
    """The default mask scale: the smallest power of two that brings the longest side to ``max_side`` or
    less, but no more than an eighth of the tile (so a tile spans at least 8 x 8 mask pixels)."""
    scale = 1
    while max(height, width) / scale > max_side:
        scale *= 2
    while scale > 1 and scale * MASK_PER_TILE > tile:
        scale //= 2
    return scale


def _grid(reader: RasterReader, scale: int) -> tuple[int, int]:
    return math.ceil(reader.info.height / scale), math.ceil(reader.info.width / scale)


#: Glass scores below this on both channels (saturation, and darkness 1 − grey/white); stained tissue above.
GLASS_CEILING = 0.15


def tissue_score(rgb: np.ndarray, channel: str) -> np.ndarray:
    """Per-pixel "tissue-ness" in [0, 1]: HSV saturation, or for "grey" the darkness 1 − grey / white."""
    values = rgb.astype(np.float32)
    if channel == "saturation":
        if rgb.shape[0] < 3:
            raise OptionError("tissue detection on saturation needs 3 bands (RGB); use tissue_channel grey")
        top, bottom = values[:3].max(axis=0), values[:3].min(axis=0)
        return np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)
    if channel == "grey":
        white = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else float(np.nanmax(values)) or 1.0
        return 1.0 - values.mean(axis=0) / white
    raise OptionError(f"unknown tissue channel {channel!r} (expected one of {', '.join(TISSUE_CHANNELS)})")


def clean_up(tissue: np.ndarray) -> np.ndarray:
    """Close small gaps, then drop specks (dust, debris) and fill small holes."""
    closed = closing(tissue, disk(CLOSING_RADIUS))
    kept = remove_small_objects(closed, max_size=SPECK_AREA)
    return remove_small_holes(kept, max_size=SPECK_AREA)


def tissue_mask(
    reader: RasterReader, scale: int, channel: str = "saturation", threshold: float | None = None
) -> CoarseMask:
    """Tissue on a ``scale`` grid: score > ``threshold`` (Otsu's on the valid pixels when None), cleaned up."""
    data, valid = reader.read_reduced(_grid(reader, scale), "average")
    score = tissue_score(data, channel)
    if threshold is None:
        values = score[valid]
        if values.size == 0 or float(values.max() - values.min()) < 1e-6:
            raise InputError(
                f"cannot separate tissue from background in {reader.info.path}: its {channel} is uniform; "
                "give tissue_threshold or run without a mask"
            )
        # Otsu splits whatever is there in two; on a slide with no glass that would cut the tissue in half, so
        # the threshold never exceeds a score that glass does not reach.
        threshold = min(float(threshold_otsu(values)), GLASS_CEILING)
    tissue = clean_up((score > threshold) & valid)
    source = f"tissue ({channel} > {threshold:.3g})"
    return CoarseMask(tissue, scale, reader.info.height, reader.info.width, source)


def nodata_mask(reader: RasterReader, scale: int) -> CoarseMask:
    """The input's own validity on a ``scale`` grid: a cell is valid where any pixel under it may be."""
    _, valid = reader.read_reduced(_grid(reader, scale), "average")
    return CoarseMask(valid, scale, reader.info.height, reader.info.width, "nodata")


def raster_mask(path: str | Path, reader: RasterReader, scale: int) -> CoarseMask:
    """A mask raster (band 1; non-zero and not nodata = compute) on ``reader``'s ``scale`` grid."""
    shape = _grid(reader, scale)
    info = reader.info
    mask_reader = open_raster(path, bands=[1])
    try:
        m = mask_reader.info
        if m.crs and info.crs and info.transform:
            array = _warp(str(path), info.crs, Affine(*info.transform) * Affine.scale(scale), shape)
        else:
            input_aspect, mask_aspect = info.width / info.height, m.width / m.height
            if abs(mask_aspect / input_aspect - 1) > ASPECT_TOLERANCE:
                raise InputError(
                    f"mask {path} is {m.height} x {m.width} px but the input is {info.height} x {info.width} px: "
                    "their aspect ratios differ, so the mask cannot be stretched over the input (give a mask of "
                    "the input's shape, or georeferenced mask and input)"
                )
            reduced = (min(shape[0], m.height), min(shape[1], m.width))
            values, valid = mask_reader.read_reduced(reduced, "nearest")
            array = _stretch((values[0] != 0) & valid, shape)
    finally:
        mask_reader.close()
    return CoarseMask(array, scale, info.height, info.width, Path(path).name)


def _stretch(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``shape`` (same extent)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def _warp(path: str, crs: str, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """A georeferenced mask warped (nearest) onto the grid ``transform`` in ``crs``: True where the mask is
    non-zero; its nodata and everything outside it are False."""
    try:
        with rasterio.open(path) as ds:
            out = np.zeros(shape, dtype=ds.dtypes[0])
            reproject(
                rasterio.band(ds, 1),
                out,
                dst_transform=transform,
                dst_crs=CRS.from_wkt(crs),
                resampling=Resampling.nearest,
                dst_nodata=0,
            )
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"cannot warp mask {path} onto the input's grid: {exc}") from None
    return out != 0


def make_mask(
    reader: RasterReader,
    mask: str | None,
    scale: int,
    channel: str = "saturation",
    threshold: float | None = None,
) -> CoarseMask | None:
    """The mask a run asked for: "tissue", "nodata", a mask raster's path, or None / "none" for no mask."""
    if mask is None or mask == "none":
        return None
    if mask == "tissue":
        return tissue_mask(reader, scale, channel, threshold)
    if mask == "nodata":
        return nodata_mask(reader, scale)
    if not Path(mask).exists():
        raise InputError(f"mask {mask} does not exist (--mask takes tissue, nodata, none or a raster's path)")
    return raster_mask(mask, reader, scale)
