"""A synthetic whole-slide image, generated tile by tile into a pyramidal OME-TIFF (never whole in memory).

Tissue sections are a few large irregular blobs (a stained, textured pink/purple with darker nuclei) on bright
glass; ``tissue`` sets roughly which share of the slide they cover. Every pixel is a pure function of its
coordinates, so the reduced levels are the same picture at lower resolution.

    python -m sample_data.slide --size 40000 --tissue 0.15 --out /tmp/slide.ome.tif
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

TILE = 512
MPP = 0.5


def _blobs(side: int, tissue: float, seed: int) -> list[tuple[float, float, float, float, float]]:
    """Ellipses (centre y, x, radii, angle) covering about ``tissue`` of a ``side``² slide."""
    rng = np.random.default_rng(seed)
    if tissue >= 1:
        return []
    count = 5
    area = tissue * side * side / count
    blobs = []
    for i in range(count):
        ratio = rng.uniform(0.5, 1.0)
        ry = math.sqrt(area / (math.pi * ratio))
        blobs.append(((i + 0.5) / count * side, rng.uniform(0.3, 0.7) * side, ry, ry * ratio, rng.uniform(0, np.pi)))
    return blobs


_NOISE = np.random.default_rng(12345).normal(0, 4, (TILE, TILE, 3)).astype(np.float32)


def _noise(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Pixel noise as a (periodic) function of the pixel's coordinates."""
    ys = np.arange(y0, y0 + h) % TILE
    xs = np.arange(x0, x0 + w) % TILE
    return _NOISE[np.ix_(ys, xs)]


def render(y0: int, x0: int, h: int, w: int, scale: float, side: int, tissue: float, seed: int) -> np.ndarray:
    """RGB (h, w, 3) uint8 of the window at (y0, x0) of a level ``scale`` times coarser than level 0."""
    blobs = _blobs(side, tissue, seed)
    near = [b for b in blobs if _meets(b, y0 * scale, x0 * scale, (y0 + h) * scale, (x0 + w) * scale)]
    if tissue < 1 and not near:  # glass only
        return np.clip(np.float32(238.0) + _noise(y0, x0, h, w), 0, 255).astype(np.uint8)
    y = (np.arange(y0, y0 + h, dtype=np.float64)[:, None] + 0.5) * scale
    x = (np.arange(x0, x0 + w, dtype=np.float64)[None, :] + 0.5) * scale
    inside = np.zeros((h, w), dtype=bool) if tissue < 1 else np.ones((h, w), dtype=bool)
    for cy, cx, ry, rx, angle in near:
        dy, dx = y - cy, x - cx
        u = (np.cos(angle) * dy + np.sin(angle) * dx) / ry
        v = (-np.sin(angle) * dy + np.cos(angle) * dx) / rx
        wobble = 1 + 0.08 * np.sin(7 * np.arctan2(v, u))
        inside |= u * u + v * v <= wobble * wobble
    texture = np.sin(y / 9.0) * np.cos(x / 7.0) + np.sin((x + y) / 23.0)
    nuclei = (np.sin(y / 3.1) * np.sin(x / 2.9) > 0.85).astype(np.float64)
    rgb = np.empty((h, w, 3), dtype=np.float64)
    rgb[...] = (238.0, 236.0, 240.0)  # glass
    stain = np.stack([205 + 18 * texture - 90 * nuclei, 120 + 15 * texture - 60 * nuclei, 175 + 12 * texture], -1)
    rgb[inside] = stain[inside]
    rgb += _noise(y0, x0, h, w)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _meets(
    blob: tuple[float, float, float, float, float], top: float, left: float, bottom: float, right: float
) -> bool:
    cy, cx, ry, rx, _ = blob
    reach = 1.1 * max(ry, rx)
    return top < cy + reach and bottom > cy - reach and left < cx + reach and right > cx - reach


def _tiles(level_side: int, scale: float, side: int, tissue: float, seed: int) -> Iterator[np.ndarray]:
    for y in range(0, level_side, TILE):
        for x in range(0, level_side, TILE):
            tile = np.full((TILE, TILE, 3), 238, np.uint8)
            h, w = min(TILE, level_side - y), min(TILE, level_side - x)
            tile[:h, :w] = render(y, x, h, w, scale, side, tissue, seed)
            yield tile


def write_slide(path: Path, side: int, tissue: float = 0.15, seed: int = 0) -> Path:
    """Write a ``side``² synthetic slide (JPEG tiles, levels down to ≤ 2048 px, 0.5 µm/px) to ``path``."""
    levels = [side]
    while levels[-1] > 2048:
        levels.append(math.ceil(levels[-1] / 4))
    options = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg", "dtype": np.uint8}
    metadata = {
        "axes": "YXS",
        "PhysicalSizeX": MPP,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": MPP,
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for i, level_side in enumerate(levels):
            scale = side / level_side
            tiles = _tiles(level_side, scale, side, tissue, seed)
            shape = (level_side, level_side, 3)
            if i == 0:
                tif.write(tiles, shape=shape, subifds=len(levels) - 1, metadata=metadata, **options)
            else:
                tif.write(tiles, shape=shape, subfiletype=1, metadata=None, **options)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--tissue", type=float, default=0.15)
    args = parser.parse_args()
    write_slide(args.out, args.size, args.tissue)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
