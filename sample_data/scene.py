"""A synthetic scene with ground truth, computed window by window so any size streams to disk.

Terrain is a smooth multi-scale texture in green/brown with pixel noise; on it sit "buildings": rotated bright
rectangles with darker roof edges, one or none per 48-pixel cell. Every pixel is a pure function of its
coordinates and the seed, so windows of any size agree and a 8192² scene never sits in memory.
"""

from __future__ import annotations

import numpy as np

CELL = 48


def _hash(*arrays: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) values from integer coordinates (a small integer hash)."""
    h = np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    for a in arrays:
        h = (h ^ a.astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    h = h * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53


def _terrain(y: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = np.zeros(np.broadcast_shapes(y.shape, x.shape))
    for scale in (400.0, 150.0, 60.0, 25.0):
        fy, fx, phase = rng.uniform(0.5, 1.5, 3) * (2 * np.pi / scale)
        field += np.sin(y * fy + phase) * np.cos(x * fx - phase) * (scale / 400.0) ** 0.3
    return field / 2.5


def synthesize(row0: int, col0: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB pixels (3, height, width) uint8 and truth (height, width) uint8 (1 = building) of a window."""
    y = np.arange(row0, row0 + height, dtype=np.float64)[:, None]
    x = np.arange(col0, col0 + width, dtype=np.float64)[None, :]
    t = _terrain(y, x, seed)
    yi, xi = np.meshgrid(np.arange(row0, row0 + height), np.arange(col0, col0 + width), indexing="ij")
    noise = _hash(yi, xi, seed=seed) - 0.5
    rgb = np.stack([90 + 40 * t + 25 * noise, 110 + 45 * t + 25 * noise, 70 + 30 * t + 25 * noise])

    truth = np.zeros((height, width), dtype=np.uint8)
    edge = np.zeros((height, width), dtype=bool)
    # Each building lies inside its cell's 3x3 neighbourhood; visit every cell that can reach this window.
    for cy in range(row0 // CELL - 1, (row0 + height) // CELL + 2):
        for cx in range(col0 // CELL - 1, (col0 + width) // CELL + 2):
            u = _hash(np.array([cy + 10_000]), np.array([cx + 10_000]), seed=seed + 1)[0]
            if u > 0.55:
                continue
            p = _hash(np.array([cy, cy + 1, cy + 2, cy + 3]), np.array([cx] * 4), seed=seed + 2)
            centre_y, centre_x = (cy + 0.5) * CELL + (p[0] - 0.5) * 12, (cx + 0.5) * CELL + (p[1] - 0.5) * 12
            half_h, half_w = 6 + 12 * p[2], 6 + 12 * p[3]
            angle = _hash(np.array([cy]), np.array([cx + 7]), seed=seed + 3)[0] * np.pi
            lo_y, hi_y = int(centre_y - 26) - row0, int(centre_y + 27) - row0
            lo_x, hi_x = int(centre_x - 26) - col0, int(centre_x + 27) - col0
            sy, sx = (
                slice(max(lo_y, 0), max(min(hi_y, height), 0)),
                slice(max(lo_x, 0), max(min(hi_x, width), 0)),
            )
            if sy.start >= sy.stop or sx.start >= sx.stop:
                continue
            dy, dx = y[sy] - centre_y, x[:, sx] - centre_x
            u_ = np.cos(angle) * dy + np.sin(angle) * dx
            v_ = -np.sin(angle) * dy + np.cos(angle) * dx
            inside = (np.abs(u_) <= half_h) & (np.abs(v_) <= half_w)
            rim = inside & ((np.abs(u_) > half_h - 2) | (np.abs(v_) > half_w - 2))
            truth[sy, sx] |= inside
            edge[sy, sx] |= rim
    roof = truth.astype(bool)
    rgb[:, roof] = np.array([205.0, 195.0, 185.0])[:, None] + 20 * noise[roof]
    rgb[:, edge] -= 70
    return np.clip(rgb, 0, 255).astype(np.uint8), truth
