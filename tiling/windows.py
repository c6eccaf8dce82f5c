"""Blending windows: how much each pixel of a tile counts when overlapping predictions are averaged.

Windows are separable (outer product of two 1-D profiles) and strictly positive, so the weighted average
``Σ w·p / Σ w`` never divides by zero anywhere a tile ran, including the raster's corners where one tile's
edge is the only cover.
"""

from __future__ import annotations

import numpy as np

from .errors import OptionError

BLEND_KINDS = ("gaussian", "cosine", "constant", "rim")
#: The ``rim`` window's floor band: this share of the tile on each side (half of a 0.25 overlap).
RIM_SHARE = 0.125
#: Smallest 1-D weight; the 2-D corner weight is its square (1e-6), small but never zero.
WEIGHT_FLOOR = 1e-3


def window_profile(kind: str, size: int, sigma: float = 0.125) -> np.ndarray:
    """1-D weights of length ``size``, peak 1 at the centre, floored at ``WEIGHT_FLOOR``.

    ``gaussian``: exp(-d²/2σ²) with σ = ``sigma`` × size (nnU-Net and MONAI use 1/8);
    ``cosine``: the Hann window, sampled at pixel centres; ``constant``: ones; ``rim``: the Gaussian with its
    outer ``RIM_SHARE`` of the tile on each side at the floor. A 'same' model's tile rim saw zero padding where
    one pass over the whole raster sees pixels; with an overlap of at least twice the rim every pixel inside the
    raster lies outside some tile's rim, so the rims count for (almost) nothing. At the raster's border, where
    only rims cover a pixel, the floor weights cancel in ``Σ w·p / Σ w``.
    """
    if size <= 0:
        raise OptionError(f"window size must be positive, got {size}")
    centres = np.arange(size, dtype=np.float64) + 0.5
    if kind == "constant":
        profile = np.ones(size)
    elif kind in ("gaussian", "rim"):
        if not sigma > 0:
            raise OptionError(f"gaussian sigma must be a positive fraction of the tile, got {sigma}")
        d = centres - size / 2
        profile = np.exp(-0.5 * (d / (sigma * size)) ** 2)
    elif kind == "cosine":
        profile = np.sin(np.pi * centres / size) ** 2
    else:
        raise OptionError(f"unknown blend window {kind!r} (expected one of {', '.join(BLEND_KINDS)})")
    profile = profile / profile.max()
    if kind == "rim":
        rim = int(RIM_SHARE * size)  # under half the tile: the centre keeps its peak
        profile[:rim] = profile[size - rim :] = WEIGHT_FLOOR
    return np.maximum(profile, WEIGHT_FLOOR).astype(np.float32)


def window_2d(kind: str, size: int, sigma: float = 0.125) -> np.ndarray:
    """The ``size`` × ``size`` tile weight: outer product of the 1-D profile with itself."""
    profile = window_profile(kind, size, sigma)
    return np.outer(profile, profile)
