"""Second pass, in each chunk: boundary pixels join the nearest seed, and the chunk's objects are measured.

Growth is ``radius`` steps of a constrained dilation: at each step a growth-class pixel not yet taken joins the
object of a 4-neighbour taken before this step, the one with the smallest key when several touch it (the object
whose first seed pixel comes first). After ``radius`` steps a pixel's object depends only on pixels within
``radius``, so a chunk read with a ``radius``-pixel halo decides its own pixels exactly as the whole raster would.
"""

from __future__ import annotations

import numpy as np

NONE = np.iinfo(np.int64).max


def grow(keys: np.ndarray, growable: np.ndarray, radius: int) -> np.ndarray:
    """``keys`` (int64, 0 = no object) with the ``growable`` pixels within ``radius`` steps of an object joined to
    it, ties to the smallest key."""
    keys = keys.copy()
    for _ in range(radius):
        open_ = growable & (keys == 0)
        if not open_.any():
            break
        taken = np.where(keys > 0, keys, NONE)
        best = np.full(keys.shape, NONE, np.int64)
        np.minimum(best[1:], taken[:-1], out=best[1:])
        np.minimum(best[:-1], taken[1:], out=best[:-1])
        np.minimum(best[:, 1:], taken[:, :-1], out=best[:, 1:])
        np.minimum(best[:, :-1], taken[:, 1:], out=best[:, :-1])
        joins = open_ & (best != NONE)
        keys[joins] = best[joins]
    return keys
