"""What a TIFF slide is made of: its format, its pyramid levels, their physical pixel size, and whether its tiles
can be decoded here; and which level a run at a given µm per pixel should read.

Pixel size comes from, in order: the Aperio ``MPP`` of an SVS description, the OME ``PhysicalSizeX/Y`` of the
image, or the TIFF resolution tags when they state a physical unit (NDPI and most scanners' generic TIFFs).
A level's pixel size is the full-resolution pixel size times the level's downsampling.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import tifffile
from tifffile import TIFF
from tifffile.tifffile import svs_description_metadata

from ..errors import InputError, OptionError, TilewiseWarning
from .base import round_um


@dataclass(frozen=True)
class Level:
    """One resolution level of a slide: its size, its downsampling from level 0 and its µm per pixel."""

    index: int
    height: int
    width: int
    downsample: tuple[float, float]
    pixel_size_um: tuple[float, float] | None

    def describe(self) -> str:
        size = f"{self.width} x {self.height} px"
        scale = f"downsample {self.downsample[1]:.4g}"
        if self.pixel_size_um is None:
            return f"{self.index}: {size}, {scale}"
        return f"{self.index}: {size}, {scale}, {_um(self.pixel_size_um)} µm/px"


def _um(size: tuple[float, float]) -> str:
    y, x = size
    return f"{x:.4g}" if math.isclose(x, y, rel_tol=1e-3) else f"{x:.4g} x {y:.4g}"


def slide_format(tif: tifffile.TiffFile) -> str:
    """A readable name of the TIFF flavour (used in messages and ``tilewise info``)."""
    for flag, name in (
        ("is_svs", "Aperio SVS"),
        ("is_ndpi", "Hamamatsu NDPI"),
        ("is_ome", "OME-TIFF"),
        ("is_philips", "Philips TIFF"),
        ("is_scn", "Leica SCN"),
        ("is_bif", "Ventana BIF"),
    ):
        if getattr(tif, flag, False):
            return name
    return "pyramidal TIFF" if len(tif.series[0].levels) > 1 else "TIFF"


def _svs_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    try:
        mpp = svs_description_metadata(tif.pages.first.description).get("MPP")
    except ValueError:
        return None
    return (float(mpp), float(mpp)) if mpp else None


_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """``PhysicalSizeY/X`` (in µm) of the first OME image, the one tifffile serves as series 0."""
    try:
        root = ElementTree.fromstring(tif.ome_metadata or "")
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        unit = _UNIT_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or unit is None:
            return None
        sizes.append(float(value) * unit)
    return (sizes[0], sizes[1]) if sizes[0] > 0 and sizes[1] > 0 else None


def resolution_pixel_size(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """µm per pixel (y, x) from the TIFF resolution tags, when they state a physical unit."""
    unit = page.tags.get("ResolutionUnit")
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    if per_unit_um is None:
        return None

    def size(tag: tifffile.TiffTag) -> float | None:
        num, den = tag.value
        return per_unit_um * den / num if num else None

    y, x = size(yres), size(xres)
    return (y, x) if y and x else None


def base_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """µm per pixel (y, x) of series 0 at full resolution, or None when the file does not say."""
    if tif.is_svs:
        return _svs_pixel_size(tif)
    if tif.is_ome:
        return _ome_pixel_size(tif)
    return resolution_pixel_size(tif.series[0].levels[0].keyframe)


def yx_shape(shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    return shape[axes.index("Y")], shape[axes.index("X")]


def slide_levels(tif: tifffile.TiffFile) -> tuple[Level, ...]:
    """The pyramid levels of series 0 (a single level for a flat TIFF)."""
    series = tif.series[0]
    base = base_pixel_size(tif)
    height, width = yx_shape(series.levels[0].shape, series.levels[0].axes)
    levels = []
    for i, level in enumerate(series.levels):
        h, w = yx_shape(level.shape, level.axes)
        down = (height / h, width / w)
        pixel = None if base is None else (round_um(base[0] * down[0]), round_um(base[1] * down[1]))
        levels.append(Level(i, h, w, down, pixel))
    return tuple(levels)


#: The imagecodecs codec that decodes each TIFF compression (for messages about a missing codec).
_CODECS = {
    2: "ccittrle",
    3: "ccittfax3",
    4: "ccittfax4",
    5: "lzw",
    6: "jpeg",
    7: "jpeg",
    8: "zlib",
    32773: "packbits",
    32946: "zlib",
    33003: "jpeg2k",
    33004: "jpeg2k",
    33005: "jpeg2k",
    33007: "jpeg",
    34712: "jpeg2k",
    34887: "lerc",
    34892: "jpeg8",
    34925: "lzma",
    34933: "png",
    34934: "jpegxr",
    22610: "jpegxr",
    50000: "zstd",
    50001: "webp",
    50002: "jpegxl",
    52546: "jpegxl",
}


def compression_name(compression: int) -> str:
    try:
        return f"{tifffile.COMPRESSION(compression).name} (TIFF compression {int(compression)})"
    except ValueError:
        return f"TIFF compression {int(compression)}"


def check_decodable(path: str, fmt: str, page: tifffile.TiffPage) -> None:
    """Refuse, before any work, a level whose tiles no installed codec can decode; name what is missing."""
    compression = int(page.compression)
    try:
        TIFF.DECOMPRESSORS[compression]
    except KeyError:
        codec = _CODECS.get(compression)
        if codec is None:
            missing = "no codec for it exists in tifffile or imagecodecs"
        else:
            missing = f"it needs the {codec!r} codec of imagecodecs, which is not installed or not built in here"
        message = f"{path}: cannot decode this {fmt}: its tiles use {compression_name(compression)}; {missing}"
        raise InputError(message) from None


def choose_level(levels: tuple[Level, ...], mpp: float, tolerance: float, path: str) -> tuple[int, tuple[float, float]]:
    """The level to read for ``mpp`` µm per pixel and the (y, x) factor to resample it by.

    The coarsest level not coarser than the target is read; a level within ``tolerance`` (a fraction) of the
    target is read as it is, since resampling it by a factor near 1 would only blur it.
    """
    if levels[0].pixel_size_um is None:
        raise OptionError(
            f"--mpp needs the physical pixel size, which {path} does not state (no MPP, OME PhysicalSize or "
            "resolution tags); declare it with --input-mpp, or choose a level with --level"
        )

    def within(level: Level) -> bool:
        assert level.pixel_size_um is not None
        return max(level.pixel_size_um) <= mpp * (1 + tolerance)

    usable = [level for level in levels if level.pixel_size_um is not None and within(level)]
    chosen = max(usable, key=lambda level: level.downsample[0] * level.downsample[1]) if usable else levels[0]
    assert chosen.pixel_size_um is not None
    factor = (mpp / chosen.pixel_size_um[0], mpp / chosen.pixel_size_um[1])
    if all(abs(f - 1) <= tolerance for f in factor):
        return chosen.index, (1.0, 1.0)
    if not usable:
        warnings.warn(
            f"reading {path} at {mpp:g} µm/px, finer than its finest level ({_um(chosen.pixel_size_um)} µm/px): "
            f"upsampled {1 / min(factor):.3g}x (bilinear)",
            TilewiseWarning,
            stacklevel=2,
        )
        return chosen.index, factor
    return chosen.index, (max(1.0, factor[0]), max(1.0, factor[1]))


def check_level(levels: tuple[Level, ...], level: int, path: str) -> None:
    if not 0 <= level < len(levels):
        listing = "; ".join(lv.describe() for lv in levels)
        raise OptionError(f"--level {level} does not exist in {path}, which has {len(levels)} level(s): {listing}")
