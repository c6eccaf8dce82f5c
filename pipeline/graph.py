"""The Dask graph of a run: read → run owned tiles → hand overhangs to neighbours → blend → write.

One task per output chunk runs the tiles whose origin lies in that chunk (so every tile of the global grid runs
exactly once), accumulates ``Σ w·p`` over the chunk plus the tiles' overhang, and splits the sums by the output
chunk they land on. The blend task of a chunk adds what its own task and its upper/left neighbours sent,
divides by the ``Σ w`` of the tiles covering the chunk that ran (``tiling.blend.TileCover``), and the write task
stores the result. No task holds more than a chunk and its overhang, and the graph carries only small
descriptions: the reader reopens its file and the model is loaded once per process.

A valid-convolution model's tiles (``pipeline.layout``) run through the same graph: they abut, so the sums hold
one probability per pixel with weight 1, and each task reads its window with the tiles' context around it
(``TileJob.input``), mirrored where it leaves the raster.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from tiling.blend import Accumulator, Contribution, TileCover, blend
from tiling.errors import portable_errors
from tiling.masking import CoarseMask, MaskCrop
from tiling.normalize import Normalization
from tiling.plan import ChunkPlan, Span
from tiling.readers.base import RasterReader
from tiling.tile_input import PaddedInput, TileInput
from tiling.windows import window_profile

from .budget import HeapGuard, keep_freed_memory, release_free_memory
from .cache import model_cache
from .runner import ModelSpec

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
    #: What a tile's forward pass reads around its output tile (a valid model's context, mirrored).
    input: TileInput = field(default_factory=PaddedInput)


@dataclass(frozen=True)
class TileStats:
    """Tiles a chunk ran through the model, tiles it skipped (too few valid pixels), and chunks not read at
    all (no valid pixel under their window)."""

    run: int = 0
    skipped: int = 0
    unread: int = 0

    def __add__(self, other: TileStats) -> TileStats:
        return TileStats(self.run + other.run, self.skipped + other.skipped, self.unread + other.unread)


@dataclass(frozen=True)
class RunStats:
    """What a run computed: tile statistics and the number of chunks written."""

    tiles: TileStats
    chunks_written: int


@dataclass
class Spill:
    """What a chunk's tiles add to the chunks below and to the right (the tiles' overhang), and the origins of
    the tiles it owns that did not run (the blend's Σ w leaves them out)."""

    pieces: dict[ChunkIndex, Contribution | None]
    stats: TileStats
    skipped: tuple[tuple[int, int], ...] = ()


@dataclass
class ChunkResult:
    """The output of one chunk's inference: the sums on its own pixels, its validity, and its spill (only the
    spill when the chunk itself was already done)."""

    own: Contribution | None
    valid: np.ndarray | None
    spill: Spill


@lru_cache(maxsize=8)
def _profile(kind: str, tile: int, sigma: float) -> np.ndarray:
    return window_profile(kind, tile, sigma)


def tile_is_valid(valid: np.ndarray, y: int, x: int, tile: int, min_fraction: float) -> bool:
    """Whether a tile has enough valid pixels to be worth running (any at all when ``min_fraction`` is 0)."""
    window = valid[y : y + tile, x : x + tile]
    if min_fraction <= 0:
        return bool(window.any())
    return bool(np.count_nonzero(window) >= min_fraction * window.size)


@dataclass(frozen=True)
class ChunkTask:
    """Where one chunk task reads, which tiles it runs and where its sums go (small and picklable)."""

    index: ChunkIndex
    own: tuple[Span, Span]
    extent: tuple[Span, Span]
    origins: tuple[tuple[int, ...], tuple[int, ...]]
    #: Other chunks this chunk's tiles reach into, with their spans.
    spills_to: dict[ChunkIndex, tuple[Span, Span]]
    raster_shape: tuple[int, int]
    #: The valid-area mask under ``extent`` (None: the input's own validity only).
    area: MaskCrop | None = None
    #: The chunk itself is already written (a resumed run): run only the tiles that reach into ``spills_to``.
    spill_only: bool = False
    #: The chunk's position in row-major order: the forward pool runs lower ranks first (see ``ForwardPool``).
    rank: int = 0


def _reaches(y: int, x: int, tile: int, spans: list[tuple[Span, Span]]) -> bool:
    rows, cols = Span(y, y + tile), Span(x, x + tile)
    return any(rows.intersect(r) is not None and cols.intersect(c) is not None for r, c in spans)


def _read_parts(rows: Span, local: list[tuple[int, int]], size: int, height: int, split: bool) -> list[Span]:
    """The row spans a chunk's input window ``rows`` is read as: the whole window, or, when ``split``, first the
    rows of its first row of tiles (``size`` px inputs) and then the whole window.

    A chunk that starts while the forward pool has nothing to do (the first of a run, or one after a stretch
    of masked-out chunks) queues its first row of tiles as soon as those rows are read, instead of leaving
    every core idle until the whole window is in (4096² RGB: 0.06-0.09 s of a 2240² window's read). The second
    read takes the first rows again, most often from a cache (GDAL's blocks, a remote reader's kept blocks):
    cheaper than joining the two parts, a copy of the whole window.
    """
    if not split or not local:
        return [rows]
    head = rows.start + local[0][0] + size
    if head >= min(rows.stop, height):
        return [rows]
    return [Span(rows.start, head), rows]


def _selected(valid: np.ndarray, before: int, rows: Span, cols: Span, area: MaskCrop | None) -> np.ndarray:
    """Validity within the valid-area mask on the output frame ``rows`` × ``cols`` (as far as ``valid``, the
    input frame's validity read so far, reaches): the output tiles' pixels, ``before`` px into the input."""
    n_rows = min(valid.shape[-2] - before, rows.size)
    selected = valid[before : before + n_rows, before : before + cols.size]
    return selected if area is None else selected & area.expand(Span(rows.start, rows.start + n_rows), cols)


@portable_errors
def infer_chunk(reader: RasterReader, job: TileJob, task: ChunkTask, _after: object = None) -> ChunkResult:
    """Read a chunk's window, run the tiles it owns, and split the weighted sums by destination chunk.

    ``task.area`` is the valid-area mask under the window (None: the input's own validity only). A window with
    no pixel in the mask is not read. Tiles with fewer than ``job.min_valid_fraction`` of their pixels valid
    (and inside the mask) are not run; pixels outside the mask come out NaN. The mask does not change what the
    model sees: only the input's own invalid pixels (nodata) are zeroed in the tiles that run.
    ``_after`` is the (ignored) result of the task this one is throttled behind (see ``build_graph``).
    """
    tile = job.tile
    origins = [(y, x) for y in task.origins[0] for x in task.origins[1]]
    rows, cols = task.extent
    own_rows, own_cols = task.own
    area = task.area
    if area is not None and not area.any():
        stats = TileStats(0, len(origins), 1)
        unread = None if task.spill_only else np.zeros((own_rows.size, own_cols.size), bool)
        return ChunkResult(None, unread, Spill(dict.fromkeys(task.spills_to), stats, tuple(origins)))
    if task.spill_only:
        origins = [(y, x) for y, x in origins if _reaches(y, x, tile, list(task.spills_to.values()))]
        if not origins:
            return ChunkResult(None, None, Spill(dict.fromkeys(task.spills_to), TileStats()))
        rows = Span(min(y for y, _ in origins), max(y for y, _ in origins) + tile)
        cols = Span(min(x for _, x in origins), max(x for _, x in origins) + tile)
    # Local origins are the same in the output frame (``rows`` × ``cols``) and in the input frame, which starts
    # ``before`` px earlier: a tile's input starts that much before its output.
    local = [(y - rows.start, x - cols.start) for y, x in origins]  # row-major
    window = job.input
    size = window.input_size(tile)
    in_rows = Span(rows.start - window.before, rows.stop + window.after)
    in_cols = Span(cols.start - window.before, cols.stop + window.after)
    accumulator = Accumulator(rows, cols, job.classes, _profile(job.blend, tile, job.sigma))
    runnable: list[tuple[int, int]] = []
    considered = 0
    with contextlib.ExitStack() as queued:
        groups = []
        for part in _read_parts(in_rows, local, size, task.raster_shape[0], model_cache().is_idle(job.model)):
            image, valid = window.read(reader, part, in_cols, task.raster_shape)
            selected = _selected(valid, window.before, rows, cols, area)
            ready = [o for o in local[considered:] if o[0] + size <= image.shape[-2]]
            considered += len(ready)
            run_now = [o for o in ready if tile_is_valid(selected, o[0], o[1], tile, job.min_valid_fraction)]
            if run_now:
                keep_freed_memory()
                mask = None if valid.all() else valid
                runner = model_cache().runner(job.model)
                group = runner.queued(image, mask, run_now, size, job.normalization, task.rank)
                groups.append(queued.enter_context(group))
                runnable += run_now
        del image, valid
        for results in groups:
            for batch_origins, probs in results:
                # A valid model's input may be a few px larger than its output tile needs: drop their output.
                tiles = probs[..., :tile, :tile]
                accumulator.add(tiles, [(y + rows.start, x + cols.start) for y, x in batch_origins])
    assert considered == len(local)

    spill = {index: accumulator.contribution(r, c, copy=True) for index, (r, c) in task.spills_to.items()}
    stats = TileStats(len(runnable), len(local) - len(runnable))
    ran = set(runnable)
    skipped = tuple((y + rows.start, x + cols.start) for y, x in local if (y, x) not in ran)
    if task.spill_only:
        return ChunkResult(None, None, Spill(spill, stats, skipped))
    own_valid = selected[: own_rows.size, : own_cols.size].copy()
    return ChunkResult(accumulator.contribution(*task.own, copy=False), own_valid, Spill(spill, stats, skipped))


def blend_chunk(
    index: ChunkIndex, rows: Span, cols: Span, job: TileJob, cover: TileCover, result: ChunkResult, spills: list[Spill]
) -> np.ndarray:
    """Blended probabilities (classes, rows, cols) of chunk ``index``: its own sums plus what its upper and
    left neighbours spilled into it, divided by the Σ w of the ``cover`` tiles that ran; NaN where the input is
    invalid or no tile ran.

    The sums are taken in place in the chunk's own accumulator: this task is the only reader of ``result.own``
    (unless its array came read-only, e.g. from another process)."""
    pieces = [s.pieces.get(index) for s in spills]
    profile = _profile(job.blend, job.tile, job.sigma)
    weights = cover.weight_sum(rows, cols, profile, [origin for s in spills for origin in s.skipped])
    own = result.own
    if own is not None and own.num.flags.writeable:
        probs = blend(rows, cols, job.classes, pieces, weights, into=own)
    else:
        probs = blend(rows, cols, job.classes, [own, *pieces], weights)
    assert result.valid is not None
    if not result.valid.all():
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
    lookahead: int | None = 3,
    done: frozenset[ChunkIndex] = frozenset(),
    mask: CoarseMask | None = None,
    heap: HeapGuard | None = None,
) -> dict[Any, Any]:
    """The tasks of a run: (keys.probs, 0, i, j) holds chunk (i, j)'s blended probabilities; with ``outputs``
    also a write task per chunk and ``keys.done``, which sums the tile statistics once everything is written.
    With a valid-area ``mask``, each chunk task carries the crop of the mask under its window.

    Chunk tasks are throttled: the task of the k-th chunk (row-major) waits until chunk k - ``lookahead`` is
    finished (written, or blended without outputs). Without this a scheduler may run the chunks in any order
    and pile up sums waiting for neighbours that have not run; with it, the chunks in flight stay at
    ``lookahead`` and memory stays bounded whatever the raster's size. ``lookahead=None`` leaves the order to the
    scheduler (the distributed scheduler queues root tasks and does this by itself).

    Chunks in ``done`` (already written by an interrupted run) are neither run nor written; where their tiles
    reach into a chunk that is not done, a spill-only task reruns just those tiles.

    A local run passes its ``heap`` guard, which decides after each written chunk whether to trim the heaps;
    without one (a graph for cluster workers) every written chunk trims them.
    """
    dsk: dict[Any, Any] = {}
    n_rows, n_cols = plan.shape
    shape = (plan.grid.height, plan.grid.width)
    todo = [(i, j) for i in range(n_rows) for j in range(n_cols) if (i, j) not in done]
    finished = keys.write if outputs is not None else keys.probs

    def finished_key(i: int, j: int) -> tuple[Any, ...]:
        return (finished, i, j) if outputs is not None else (finished, 0, i, j)

    def spans(i: int, j: int) -> tuple[Span, Span]:
        return plan.rows.span(i), plan.cols.span(j)

    def chunk_task(i: int, j: int, spill_only: bool) -> ChunkTask:
        targets = [(di, dj) for di in plan.rows.destinations(i) for dj in plan.cols.destinations(j)]
        targets = [t for t in targets if t != (i, j) and (not spill_only or t not in done)]
        extent = (plan.rows.extent(i), plan.cols.extent(j))
        return ChunkTask(
            index=(i, j),
            own=spans(i, j),
            extent=extent,
            origins=(plan.rows.owned(i), plan.cols.owned(j)),
            spills_to={t: spans(*t) for t in targets},
            raster_shape=shape,
            area=None if mask is None else mask.crop(*extent),
            spill_only=spill_only,
            rank=i * n_cols + j,
        )

    # Done chunks whose tiles reach into a chunk still to do: they only hand over their spill.
    for i, j in sorted(done):
        task = chunk_task(i, j, spill_only=True)
        if task.spills_to:
            dsk[(keys.infer, i, j)] = (infer_chunk, reader, job, task, None)
            dsk[(keys.spill, i, j)] = (_spill, (keys.infer, i, j))

    for k, (i, j) in enumerate(todo):
        after = finished_key(*todo[k - lookahead]) if lookahead is not None and k >= lookahead else None
        dsk[(keys.infer, i, j)] = (infer_chunk, reader, job, chunk_task(i, j, spill_only=False), after)
        dsk[(keys.spill, i, j)] = (_spill, (keys.infer, i, j))
        # The blend also depends on its own chunk's spill, so the spill is split off before the chunk's result
        # (the largest object of the run) is released, instead of pinning it until a neighbour needs it.
        spills = [(keys.spill, si, sj) for si in plan.rows.sources(i) for sj in plan.cols.sources(j)]
        cover = TileCover(plan.rows.covering(i), plan.cols.covering(j))
        dsk[(keys.probs, 0, i, j)] = (blend_chunk, (i, j), *spans(i, j), job, cover, (keys.infer, i, j), spills)
        if outputs is not None:
            write = (_write, outputs, (i, j), *spans(i, j), (keys.probs, 0, i, j), (keys.spill, i, j), heap)
            dsk[(keys.write, i, j)] = write
    if outputs is not None:
        spill_only = [(keys.spill, i, j) for i, j in sorted(done) if (keys.spill, i, j) in dsk]
        dsk[keys.done] = (_total, [(keys.write, i, j) for i, j in todo], spill_only)
    return dsk


@portable_errors
def _write(
    outputs: Any, index: ChunkIndex, rows: Span, cols: Span, probs: np.ndarray, spill: Spill, heap: HeapGuard | None
) -> tuple[TileStats, int]:
    """Write a chunk; pass on its tile statistics (carried by its spill) to the final task."""
    outputs.write(index, rows, cols, probs)
    del probs
    if heap is not None:
        heap.chunk_written()
    else:
        release_free_memory()
    return spill.stats, 1


def _total(written: list[tuple[TileStats, int]], spill_only: list[Spill]) -> RunStats:
    total = TileStats()
    for stats, _ in written:
        total = total + stats
    for spill in spill_only:
        total = total + spill.stats
    return RunStats(total, len(written))
