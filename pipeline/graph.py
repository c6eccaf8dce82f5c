"""The Dask graph of a run: read → run owned tiles → hand overhangs to neighbours → blend → write.

One task per output chunk runs the tiles whose origin lies in that chunk (so every tile of the global grid runs
exactly once), accumulates ``Σ w·p`` and ``Σ w`` over the chunk plus the tiles' overhang, and splits the sums by
the output chunk they land on. The blend task of a chunk adds what its own task and its upper/left neighbours
sent, divides, and the write task stores the result. No task holds more than a chunk and its overhang, and the
graph carries only small descriptions: the reader reopens its file and the model is loaded once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from tiling.blend import Accumulator, Contribution, blend
from tiling.masking import CoarseMask, MaskCrop
from tiling.normalize import Normalization
from tiling.plan import ChunkPlan, Span
from tiling.readers.base import RasterReader
from tiling.windows import window_2d

from .budget import release_free_memory
from .runner import ModelSpec, get_runner

ChunkIndex = tuple[int, int]


@dataclass(frozen=True)
class TileJob:
    """What every chunk task needs to know besides its own position (small and picklable)."""

    tile: int
    blend: str
    sigma: float
    normalization: Normalization
    classes: int
    model: ModelSpec
    min_valid_fraction: float = 0.0


@dataclass(frozen=True)
class TileStats:
    """Tiles a chunk ran through the model, tiles it skipped (too few valid pixels), and chunks not read at
    all (no valid pixel under their window)."""

    run: int = 0
    skipped: int = 0
    unread: int = 0

    def __add__(self, other: TileStats) -> TileStats:
        return TileStats(self.run + other.run, self.skipped + other.skipped, self.unread + other.unread)


@dataclass
class Spill:
    """What a chunk's tiles add to the chunks below and to the right (the tiles' overhang)."""

    pieces: dict[ChunkIndex, Contribution | None]
    stats: TileStats


@dataclass
class ChunkResult:
    """The output of one chunk's inference: the sums on its own pixels, its validity, and its spill."""

    own: Contribution | None
    valid: np.ndarray
    spill: Spill


@lru_cache(maxsize=8)
def _weight(kind: str, tile: int, sigma: float) -> np.ndarray:
    return window_2d(kind, tile, sigma)


def _pad_to(array: np.ndarray, rows: int, cols: int, value: float | bool) -> np.ndarray:
    """Pad the last two axes at the bottom/right (only when the raster is smaller than one tile)."""
    pad_r, pad_c = rows - array.shape[-2], cols - array.shape[-1]
    if pad_r == 0 and pad_c == 0:
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_r), (0, pad_c)]
    return np.pad(array, widths, constant_values=value)


def tile_is_valid(valid: np.ndarray, y: int, x: int, tile: int, min_fraction: float) -> bool:
    """Whether a tile has enough valid pixels to be worth running (any at all when ``min_fraction`` is 0)."""
    window = valid[y : y + tile, x : x + tile]
    if min_fraction <= 0:
        return bool(window.any())
    return bool(np.count_nonzero(window) >= min_fraction * window.size)


def infer_chunk(
    reader: RasterReader,
    job: TileJob,
    own: tuple[Span, Span],
    extent: tuple[Span, Span],
    origins: tuple[tuple[int, ...], tuple[int, ...]],
    destinations: dict[ChunkIndex, tuple[Span, Span]],
    raster_shape: tuple[int, int],
    area: MaskCrop | None = None,
    _after: object = None,
) -> ChunkResult:
    """Read a chunk's window, run the tiles it owns, and split the weighted sums by destination chunk.

    ``area`` is the valid-area mask under the window (None: the input's own validity only). A window with no
    pixel in the mask is not read. Tiles with fewer than ``job.min_valid_fraction`` of their pixels valid
    (and inside the mask) are not run; pixels outside the mask come out NaN. The mask does not change what the
    model sees: only the input's own invalid pixels (nodata) are zeroed in the tiles that run.
    ``_after`` is the (ignored) result of the task this one is throttled behind (see ``build_graph``).
    """
    rows, cols = extent
    height, width = raster_shape
    own_rows, own_cols = own
    local = [(y - rows.start, x - cols.start) for y in origins[0] for x in origins[1]]
    if area is not None and not area.any():
        nothing = {index: None for index, spans in destinations.items() if spans != own}
        stats = TileStats(0, len(local), 1)
        return ChunkResult(None, np.zeros((own_rows.size, own_cols.size), bool), Spill(nothing, stats))
    data, valid = reader.read(Span(rows.start, min(rows.stop, height)), Span(cols.start, min(cols.stop, width)))
    image = _pad_to(data, rows.size, cols.size, 0)
    valid = _pad_to(valid, rows.size, cols.size, False)
    selected = valid if area is None else valid & area.expand(rows, cols)
    del data

    tile = job.tile
    runnable = [o for o in local if tile_is_valid(selected, o[0], o[1], tile, job.min_valid_fraction)]
    accumulator = Accumulator(rows, cols, job.classes, _weight(job.blend, tile, job.sigma))
    if runnable:
        runner = get_runner(job.model)
        mask = None if valid.all() else valid
        for batch_origins, probs in runner.run(image, mask, runnable, tile, job.normalization):
            accumulator.add(probs, [(y + rows.start, x + cols.start) for y, x in batch_origins])
    del image

    spill = {
        index: accumulator.contribution(r, c, copy=True) for index, (r, c) in destinations.items() if (r, c) != own
    }
    stats = TileStats(len(runnable), len(local) - len(runnable))
    own_valid = selected[: own_rows.size, : own_cols.size].copy()
    return ChunkResult(accumulator.contribution(*own, copy=False), own_valid, Spill(spill, stats))


def blend_chunk(
    index: ChunkIndex, rows: Span, cols: Span, classes: int, result: ChunkResult, spills: list[Spill]
) -> np.ndarray:
    """Blended probabilities (classes, rows, cols) of chunk ``index``: its own sums plus what its upper and
    left neighbours spilled into it, divided; NaN where the input is invalid or no tile ran."""
    probs = blend(rows, cols, classes, [result.own, *(s.pieces.get(index) for s in spills)])
    probs[:, ~result.valid] = np.nan
    return probs


def _spill(result: ChunkResult) -> Spill:
    return result.spill


@dataclass(frozen=True)
class GraphKeys:
    """Names of the task groups of one run (each key is (name, i, j))."""

    token: str

    @property
    def infer(self) -> str:
        return f"tilewise-infer-{self.token}"

    @property
    def spill(self) -> str:
        return f"tilewise-spill-{self.token}"

    @property
    def probs(self) -> str:
        return f"tilewise-probs-{self.token}"

    @property
    def write(self) -> str:
        return f"tilewise-write-{self.token}"

    @property
    def done(self) -> str:
        return f"tilewise-done-{self.token}"


def build_graph(
    reader: RasterReader,
    plan: ChunkPlan,
    job: TileJob,
    keys: GraphKeys,
    outputs: Any | None = None,
    lookahead: int = 3,
    mask: CoarseMask | None = None,
) -> dict[Any, Any]:
    """The tasks of a run: (keys.probs, 0, i, j) holds chunk (i, j)'s blended probabilities; with ``outputs``
    also a write task per chunk and ``keys.done``, which sums the tile statistics once everything is written.
    With a valid-area ``mask``, each chunk task carries the crop of the mask under its window.

    Chunk tasks are throttled: the task of the k-th chunk (row-major) waits until chunk k - ``lookahead`` is
    finished (written, or blended without outputs). Without this a scheduler may run the chunks in any order
    and pile up sums waiting for neighbours that have not run; with it, the chunks in flight stay at
    ``lookahead`` and memory stays bounded whatever the raster's size.
    """
    dsk: dict[Any, Any] = {}
    n_rows, n_cols = plan.shape
    shape = (plan.grid.height, plan.grid.width)
    order = [(i, j) for i in range(n_rows) for j in range(n_cols)]
    finished = keys.write if outputs is not None else keys.probs

    def finished_key(i: int, j: int) -> tuple[Any, ...]:
        return (finished, i, j) if outputs is not None else (finished, 0, i, j)

    for k, (i, j) in enumerate(order):
        own = (plan.rows.span(i), plan.cols.span(j))
        destinations = {
            (di, dj): (plan.rows.span(di), plan.cols.span(dj))
            for di in plan.rows.destinations(i)
            for dj in plan.cols.destinations(j)
        }
        extent = (plan.rows.extent(i), plan.cols.extent(j))
        origins = (plan.rows.owned(i), plan.cols.owned(j))
        after = finished_key(*order[k - lookahead]) if k >= lookahead else None
        area = None if mask is None else mask.crop(*extent)
        dsk[(keys.infer, i, j)] = (infer_chunk, reader, job, own, extent, origins, destinations, shape, area, after)
        dsk[(keys.spill, i, j)] = (_spill, (keys.infer, i, j))
        # The blend also depends on its own chunk's spill, so the spill is split off before the chunk's result
        # (the largest object of the run) is released, instead of pinning it until a neighbour needs it.
        spills = [(keys.spill, si, sj) for si in plan.rows.sources(i) for sj in plan.cols.sources(j)]
        dsk[(keys.probs, 0, i, j)] = (blend_chunk, (i, j), *own, job.classes, (keys.infer, i, j), spills)
        if outputs is not None:
            dsk[(keys.write, i, j)] = (_write, outputs, *own, (keys.probs, 0, i, j), (keys.spill, i, j))
    if outputs is not None:
        dsk[keys.done] = (_total, [(keys.write, i, j) for i, j in order])
    return dsk


def _write(outputs: Any, rows: Span, cols: Span, probs: np.ndarray, spill: Spill) -> TileStats:
    """Write a chunk; pass on its tile statistics (carried by its spill) to the final task."""
    outputs.write(rows, cols, probs)
    del probs
    release_free_memory()
    return spill.stats


def _total(stats: list[TileStats]) -> TileStats:
    total = TileStats()
    for s in stats:
        total = total + s
    return total
