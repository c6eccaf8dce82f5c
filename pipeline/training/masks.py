"""Mask rasters into class ids: ids as stored, binary 0/255, or colours through a palette; or object ids
(``instances``, turned into classes by ``targets.TargetRule``); an ignore value.

Decoded labels are int64 with ``IGNORE`` (-1) where a pixel adds nothing to the loss or the metrics: the ignore
value, pixels the mask raster itself marks as nodata, and pixels whose image is nodata. A mask value that fits
no class is an error naming the value and the file, never a silent background.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiling.errors import InputError, OptionError
from tiling.readers import RasterInfo

IGNORE = -1
#: A 0/255 mask is thresholded here (PNG/JPEG compression leaves a few intermediate values).
BINARY_THRESHOLD = 128

Colour = tuple[int, int, int]


def parse_colour(value: Any) -> Colour:
    """``"#RRGGBB"`` or ``[r, g, b]`` → (r, g, b)."""
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value.strip()):
        text = value.strip().lstrip("#")
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise OptionError(f"colour {value!r} is not '#RRGGBB' or [r, g, b] with values 0-255")


def hex_colour(colour: Colour) -> str:
    return "#{:02X}{:02X}{:02X}".format(*colour)


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(3, …) uint8 colours → one int32 code per pixel."""
    rgb = rgb.astype(np.int32)
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


@dataclass(frozen=True)
class MaskEncoding:
    """How a mask raster stores classes."""

    kind: str  # ids | binary | palette | instances
    classes: int  # number of class ids (2 for a binary model)
    colours: tuple[Colour, ...] = ()  # palette: the colour of each class id
    ignore: int | Colour | None = None

    @classmethod
    def from_options(
        cls, kind: str, class_names: Sequence[str], palette: Mapping[str, Any] | None, ignore: Any
    ) -> MaskEncoding:
        classes = len(class_names)
        if kind == "binary" and classes != 2:
            raise OptionError(f"mask_encoding binary needs two class names, got {list(class_names)}")
        if kind != "palette":
            if palette:
                raise OptionError(f"a palette is given but mask_encoding is {kind!r} (set mask_encoding: palette)")
            if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)):
                raise OptionError(f"ignore_value must be a whole number for {kind} masks, got {ignore!r}")
            if kind == "ids" and ignore is not None and 0 <= ignore < classes:
                raise OptionError(f"ignore_value {ignore} is also the id of class {class_names[ignore]!r}")
            return cls(kind, classes, (), ignore)
        if palette is None:
            raise OptionError(
                "mask_encoding palette needs a palette, which a config's train: section sets, e.g. palette: "
                "{background: '#000000', building: '#FF0000'}"
            )
        unknown = sorted(set(palette) - set(class_names))
        if unknown:
            raise OptionError(f"palette names unknown class(es) {unknown} (class_names: {list(class_names)})")
        missing = [name for name in class_names if name not in palette]
        if missing:
            raise OptionError(f"palette has no colour for class(es) {missing}")
        colours = tuple(parse_colour(palette[name]) for name in class_names)
        if len(set(colours)) != len(colours):
            raise OptionError("palette gives two classes the same colour")
        ignore_colour = None if ignore is None else parse_colour(ignore)
        if ignore_colour is not None and ignore_colour in colours:
            raise OptionError(f"ignore_value {hex_colour(ignore_colour)} is also a class colour in the palette")
        return cls(kind, classes, colours, ignore_colour)

    @property
    def bands(self) -> int:
        """Bands a mask raster must have (a one-band paletted image is expanded to RGB on read)."""
        return 3 if self.kind == "palette" else 1

    def decode(self, data: np.ndarray, where: str, valid: np.ndarray | None = None) -> np.ndarray:
        """Class ids (rows, cols) int64 from raw mask pixels (bands, rows, cols); ``IGNORE`` for the ignore value
        and where ``valid`` (the mask raster's own nodata/validity) is False."""
        unlabelled = np.zeros(data.shape[1:], dtype=bool) if valid is None else ~valid
        if self.kind == "palette":
            return self._decode_palette(data, where, unlabelled)
        raw = np.where(unlabelled, 0, data[0])
        if self.kind == "instances" and raw.dtype.kind == "f":
            raise InputError(
                f"mask {where} is a {raw.dtype} raster; instance masks hold whole-number object ids (0 = background)"
            )
        if raw.dtype.kind == "f":
            if np.isnan(raw).any():
                raise InputError(f"mask {where} holds NaN values; use a whole-number mask")
            if (raw != np.round(raw)).any():
                raise InputError(f"mask {where} holds fractional values; class ids must be whole numbers")
        raw = raw.astype(np.int64)
        ignored = unlabelled | (raw == self.ignore) if self.ignore is not None else unlabelled
        if self.kind == "instances":
            if ((~ignored) & (raw < 0)).any():
                raise InputError(f"mask {where} has negative object ids; instance masks hold ids ≥ 0 (0 = background)")
            ids = raw.copy()
            ids[ignored] = IGNORE
            return ids
        if self.kind == "binary":
            bad = (~ignored) & ((raw < 0) | (raw > 255))
            labels = (raw >= BINARY_THRESHOLD).astype(np.int64)
        else:
            bad = (~ignored) & ((raw < 0) | (raw >= self.classes))
            labels = raw.copy()
        if bad.any():
            value, (row, col) = raw[bad][0], np.argwhere(bad)[0]
            expected = "0/255" if self.kind == "binary" else f"class ids 0-{self.classes - 1}"
            hint = "" if self.ignore is not None else " (set ignore_value for unlabelled pixels)"
            if self.kind == "ids" and self.classes == 2 and np.isin(raw[~ignored], (0, 255)).all():
                hint = "; it looks like a 0/255 mask: use --mask-encoding binary"
            raise InputError(
                f"mask {where} has value {value} at row {row}, col {col}, which is not one of the {expected}{hint}"
            )
        labels[ignored] = IGNORE
        return labels

    def _decode_palette(self, data: np.ndarray, where: str, unlabelled: np.ndarray) -> np.ndarray:
        codes = _pack(data[:3])
        known = np.array([_pack(np.array(c, dtype=np.uint8)[:, None])[0] for c in self.colours], dtype=np.int32)
        order = np.argsort(known)
        position = np.clip(np.searchsorted(known[order], codes), 0, len(known) - 1)
        labels = order[position].astype(np.int64)
        matched = known[order][position] == codes
        ignored = unlabelled.copy()
        if self.ignore is not None:
            ignored |= codes == _pack(np.array(self.ignore, dtype=np.uint8)[:, None])[0]
        labels[ignored] = IGNORE
        matched |= ignored
        if not matched.all():
            bad_codes, counts = np.unique(codes[~matched], return_counts=True)
            top = bad_codes[np.argsort(counts)[::-1][:3]]
            names = ", ".join(hex_colour(((c >> 16) & 255, (c >> 8) & 255, c & 255)) for c in top)
            row, col = np.argwhere(~matched)[0]
            raise InputError(
                f"mask {where} has {int(counts.sum())} pixel(s) in colour(s) not in the palette ({names}; first at "
                f"row {row}, col {col}); add them to the palette or set ignore_value"
            )
        return labels

    def check_raster(self, info: RasterInfo) -> None:
        if info.count < self.bands or (self.kind != "palette" and info.count != 1):
            wanted = "an RGB (or paletted) mask" if self.kind == "palette" else "a one-band mask"
            hint = "; for a mask of colours use --mask-encoding palette" if info.count >= 3 else ""
            raise InputError(
                f"mask {info.path} has {info.count} band(s); mask_encoding {self.kind} needs {wanted}{hint}"
            )
