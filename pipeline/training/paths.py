"""Lists of raster paths from patterns: globs (``*.png``) and numeric ranges (``image/{0..24}.png``)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tiling.errors import InputError

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _natural_key(path: str) -> list[object]:
    """Sort "2.png" before "10.png"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _expand_ranges(pattern: str) -> list[str]:
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") and len(first) > 1 else 0
    step = 1 if int(last) >= int(first) else -1
    out: list[str] = []
    for number in range(int(first), int(last) + step, step):
        out.extend(_expand_ranges(pattern[: match.start()] + str(number).zfill(width) + pattern[match.end() :]))
    return out


def expand_paths(patterns: Sequence[str], base: str | os.PathLike[str] | None = None) -> list[str]:
    """Every path the ``patterns`` name, in order (a glob's matches sorted naturally); relative patterns are
    taken relative to ``base`` (default: the current directory). A glob that matches nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        for entry in _expand_ranges(pattern):
            path = Path(entry).expanduser()
            if base is not None and not path.is_absolute():
                path = Path(base) / path
            if glob.has_magic(str(path)):
                matches = sorted(glob.glob(str(path)), key=_natural_key)
                if not matches:
                    raise InputError(f"no files match {entry!r}")
                out.extend(matches)
            else:
                out.append(str(path))
    return out
