"""Training targets from instance labels: the U-Net paper's separation weights, and a boundary class.

The paper (Ronneberger et al. 2015, §3) weights each pixel's loss by
``w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²))``, d1 and d2 the distances to the nearest and second-nearest
object, so that the thin background between touching objects weighs most. ``separation_weights`` computes the
second term at background pixels (``w_c``, the class balance, is the loss's class weights). Each object's
distances are taken only where the term can matter: within ``cutoff`` pixels of it, beyond which
``w0 · exp(−cutoff² / (2σ²))`` is below 1e-3 · w0.

``boundary_classes`` marks each object's pixels within ``width`` pixels of another object or the background as a
boundary class: a model that learns it keeps touching objects apart, and prediction gives the boundary back to
the nearest object (``tiling.instances``: seeds and growth). Both are computed on a tile read with a margin of at
least ``margin(...)`` pixels, so that objects cut by the tile's edge are seen whole enough.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: Where the separation term falls below this share of w0, it is left out.
NEGLIGIBLE = 1e-3


def cutoff(sigma: float) -> int:
    """Distance beyond which an object adds nothing to the separation term: d1 + d2 ≥ this gives < 1e-3 · w0."""
    return math.ceil(sigma * math.sqrt(2 * math.log(1 / NEGLIGIBLE)))


def margin(sigma: float, width: int) -> int:
    """Pixels to read around a tile so its weights and boundaries are those of the whole raster."""
    return max(cutoff(sigma), width) + 1


def separation_weights(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """``w0 · exp(−(d1 + d2)² / (2σ²))`` at the background pixels (``instances`` == 0) of an instance map
    (0 = background, one id per object), 0 elsewhere and where fewer than two objects are near (float32)."""
    far = cutoff(sigma)
    d1 = np.full(instances.shape, np.inf, np.float32)
    d2 = np.full(instances.shape, np.inf, np.float32)
    boxes = ndimage.find_objects(instances.astype(np.int64))
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(s.start - far, 0), min(s.stop + far, n)) for s, n in zip(box, instances.shape, strict=True)
        )
        distance = ndimage.distance_transform_edt(instances[window] != value).astype(np.float32)
        near1, near2 = d1[window], d2[window]
        np.minimum(near2, np.maximum(near1, distance), out=near2)
        np.minimum(near1, distance, out=near1)
    total = d1 + d2
    weights = np.zeros(instances.shape, np.float32)
    between = (instances == 0) & np.isfinite(total)
    weights[between] = w0 * np.exp(-(total[between] ** 2) / (2 * sigma**2))
    return weights


def _diamond(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (np.abs(y) + np.abs(x)) <= radius


def boundary_classes(instances: np.ndarray, object_class: np.ndarray, boundary: int, width: int) -> np.ndarray:
    """Class targets (int64) of an instance map: 0 for the background, ``object_class[id]`` inside an object,
    ``boundary`` for an object's pixels within ``width`` steps (4-connected) of another id."""
    ids = instances.astype(np.int64)
    footprint = _diamond(width)
    edge = ndimage.maximum_filter(ids, footprint=footprint, mode="nearest") != ndimage.minimum_filter(
        ids, footprint=footprint, mode="nearest"
    )
    classes = np.where(ids > 0, object_class[ids], 0)
    classes[(ids > 0) & edge] = boundary
    return classes
