"""``predict``: one pass from input raster to output raster.

    plan    = plan_run(input, model, options, output)   # reader, tile grid, chunk plan, memory, mask, output
    with plan.output.writing(...) as writing:           # the resumable work store next to the output
        graph = build_graph(reader, chunks, job, ...)   # per chunk: read → model batches → blend → write
        run the graph (threads by default, or a Dask cluster)
    # leaving the block assembles COG / OME-TIFF / OME-Zarr / Zarr, checks it and moves it into place

A pixel of the input is read by the chunk task that owns the tiles covering it, goes through the model once per
covering tile, is blended with ``Σ w·p / Σ w`` in the chunk where it lies, is written to the work store by
that chunk's write task, and reaches the output file when the finished store is assembled.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.diagnostics import ProgressBar
from dask.highlevelgraph import HighLevelGraph

from tiling.errors import InputError, OptionError
from tiling.gdal_env import gdal_block_cache
from tiling.grid import resolve_overlap
from tiling.instances.passes import Objects
from tiling.writers import Writing

from .budget import HeapGuard, keep_freed_memory, parse_size, release_free_memory
from .cache import chosen_backend, chosen_batch_size, model_cache
from .checkpoint import Checkpoint
from .cluster import SchedulerChoice, connect, run_graph, total_threads
from .devices import cpu_threads, resolve_device
from .graph import GraphKeys, RunStats, build_graph
from .objects import TaskRunner, find_objects
from .options import PredictOptions
from .products import write_products
from .run_plan import ModelSource, RunPlan, plan_run


@dataclass
class PredictReport:
    """What a run did."""

    #: Paths, or the URLs of outputs written to object storage.
    outputs: list[Path | str]
    format: str
    tiles_total: int
    tiles_run: int
    tiles_skipped: int
    chunks: int
    chunks_computed: int
    chunk: int
    workers: int
    batch_size: int | None
    device: str
    seconds: float
    #: The engine that ran the model (``--backend``; what ``auto`` chose), the workers' most common on a cluster.
    backend: str | None = None
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    chunks_unread: int = 0
    valid_fraction: float | None = None
    mask: str | None = None
    pixel_size_um: tuple[float, float] | None = None
    polygons: int | None = None
    #: Objects found, per class name (when the run writes instances).
    objects: dict[str, int] | None = None

    @property
    def skipped_fraction(self) -> float:
        """Share of the grid's tiles that were not run through the model (outside the mask or nodata)."""
        return self.tiles_skipped / self.tiles_total if self.tiles_total else 0.0


def _options(options: PredictOptions | None, overrides: dict[str, Any]) -> PredictOptions:
    return (options or PredictOptions()).updated(**overrides)


@dataclass
class _Execution:
    stats: RunStats
    workers: int
    extra: dict[str, Any]
    objects: Objects | None = None
    #: The batch size the forward passes used (the workers' most common, on a cluster).
    batch_size: int | None = None
    backend: str | None = None


def predict(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: ModelSource,
    options: PredictOptions | None = None,
    **overrides: Any,
) -> PredictReport:
    """Segment ``input`` with ``model`` (a checkpoint path, or a loaded ``Checkpoint``) and write ``output``
    (.tif → COG, .ome.tif → OME-TIFF, .ome.zarr → OME-Zarr, .zarr → Zarr; or ``format=``).

    ``overrides`` are ``PredictOptions`` fields, e.g. ``predict("scene.tif", "mask.tif", "model.safetensors",
    tile=256, output_kind="both")``. Nothing appears at ``output`` unless the run succeeds. With
    ``resume=True`` the chunks an interrupted run finished are kept and only the others run.
    """
    opts = _options(options, overrides)
    choice = SchedulerChoice.parse(opts.scheduler, opts.cluster)
    if choice.distributed and isinstance(model, Checkpoint):
        raise OptionError("a model held in memory runs on local threads only; give a checkpoint path for a cluster")
    began = time.perf_counter()
    with plan_run(input, model, opts, output, distributed=choice.distributed) as plan:
        assert plan.output is not None
        # One small GDAL block cache for the run and the assembly: GDAL's default (5 % of RAM) would let a COG's
        # assembly grow with the raster (16384²: 409 MiB more while GDAL built the overviews, 74 MiB capped).
        with (
            gdal_block_cache(plan.resources.gdal_cache_mb),
            plan.output.writing(plan.chunks.chunk, plan.chunks.shape, plan.record(), opts.resume) as writing,
        ):
            try:
                run = _execute(plan, writing, choice, opts)
            finally:
                release_free_memory()  # what the chunks freed, before the assembly allocates its own (or on failure)
        products = write_products(opts, plan, run.objects)
    return PredictReport(
        outputs=[*plan.output.names, *products.paths],
        format=plan.output.format.name,
        tiles_total=plan.grid.n_tiles,
        tiles_run=run.stats.tiles.run,
        tiles_skipped=run.stats.tiles.skipped,
        chunks=plan.chunks.n_chunks,
        chunks_computed=run.stats.chunks_written,
        chunk=plan.chunks.chunk[0],
        workers=run.workers,
        batch_size=run.batch_size,
        device=plan.job.model.device,
        backend=run.backend,
        seconds=time.perf_counter() - began,
        resumed=bool(writing.done),
        chunks_unread=run.stats.tiles.unread,
        valid_fraction=plan.mask.valid_fraction if plan.mask else None,
        mask=plan.mask.source if plan.mask else None,
        pixel_size_um=plan.reader.info.pixel_size_um,
        polygons=products.polygons,
        objects=_counts(run.objects, plan.card.class_names),
        extra=run.extra,
    )


def _counts(objects: Objects | None, class_names: tuple[str, ...]) -> dict[str, int] | None:
    if objects is None:
        return None
    values, counts = np.unique(objects.classes, return_counts=True)
    return {
        class_names[v] if v < len(class_names) else f"class {v}": int(n) for v, n in zip(values, counts, strict=True)
    }


def _execute(plan: RunPlan, writing: Writing, choice: SchedulerChoice, opts: PredictOptions) -> _Execution:
    """Run the chunks not yet done into the work store, on local threads or a Dask cluster."""
    keys = GraphKeys(uuid.uuid4().hex[:12])
    job, done = plan.job, writing.done
    if choice.distributed:
        with connect(choice) as client:
            workers = total_threads(client)
            extra = {"dashboard": client.dashboard_link, "scheduler": client.scheduler.address}
            if opts.progress:
                print(f"tilewise: Dask dashboard at {client.dashboard_link}", file=sys.stderr)
            # No throttle here: the distributed scheduler queues root tasks by itself.
            dsk = build_graph(plan.reader, plan.chunks, job, keys, writing.store, None, done, plan.mask)
            model_keys = {k for k in dsk if isinstance(k, tuple) and k[0] == keys.infer}
            gpu = job.model.device.startswith("cuda")
            report = Path(opts.report) if opts.report else None
            stats = run_graph(client, dsk, model_keys, keys.done, gpu, opts.progress, report)
            objects = _objects(plan, writing, TaskRunner(client=client), stats, done)
            chosen = [size for size in client.run(chosen_batch_size, job.model).values() if size]
            batch = max(set(chosen), key=chosen.count) if chosen else None
            engines = [name for name in client.run(chosen_backend, job.model).values() if name]
            backend = max(set(engines), key=engines.count) if engines else None
    else:
        workers, extra = plan.resources.workers, {}
        heap = HeapGuard(ceiling=plan.resources.estimated_peak)
        dsk = build_graph(plan.reader, plan.chunks, job, keys, writing.store, workers, done, plan.mask, heap)
        keep_freed_memory()  # before the run's threads take their heaps
        threads = cpu_threads(workers) if job.model.device == "cpu" else contextlib.nullcontext()
        with threads:
            stats = _run(dsk, keys.done, workers, opts.progress)
        objects = _objects(plan, writing, TaskRunner(workers), stats, done)
        batch = model_cache().batch_size(job.model)
        backend = model_cache().backend_name(job.model)
    return _Execution(stats, workers, extra, objects, batch, backend)


def _objects(
    plan: RunPlan, writing: Writing, tasks: TaskRunner, stats: RunStats, done: frozenset[tuple[int, int]]
) -> Objects | None:
    """Check that the run found valid pixels; find its objects when it writes instances."""
    if stats.tiles.run == 0 and not done:
        writing.discard()  # every chunk is nodata: nothing worth resuming
        where = f"inside the {plan.mask.source} mask" if plan.mask else "(all nodata, masked or NaN)"
        raise InputError(f"{plan.reader.info.path} has no valid pixels {where}")
    assert plan.output is not None
    if plan.output.content.instances is None:
        return None
    return find_objects(writing.store, plan.chunks, tasks)


def _run(dsk: dict[Any, Any], key: Any, workers: int, progress: bool) -> RunStats:
    """Run the graph on the local threaded scheduler.

    The run owns its thread pool: when a task fails, leaving the ``with`` waits for the tasks still running, so
    nothing writes to the work store while it is being cleaned up.
    """
    bar = ProgressBar(out=sys.stderr, dt=0.5) if progress else contextlib.nullcontext()
    with ThreadPoolExecutor(workers) as pool, bar, dask.config.set({"optimization.fuse.active": False}):
        return dask.threaded.get(dsk, key, num_workers=workers, pool=pool)


def predict_array(
    input: str | os.PathLike[str],
    model: ModelSource,
    options: PredictOptions | None = None,
    **overrides: Any,
) -> da.Array:
    """Blended probabilities of ``input`` as a lazy dask array (classes, rows, cols), NaN where invalid.

    Nothing runs until the array is computed; compute it chunk by chunk (e.g. ``da.store``) to keep memory
    bounded. The reader stays open for the array's lifetime.
    """
    plan = plan_run(input, model, _options(options, overrides))
    keys = GraphKeys(uuid.uuid4().hex[:12])
    dsk = build_graph(plan.reader, plan.chunks, plan.job, keys, lookahead=plan.resources.workers, mask=plan.mask)
    graph = HighLevelGraph.from_collections(keys.probs, dsk, dependencies=[])
    chunks = ((plan.job.classes,), *plan.chunks.chunks)
    return da.Array(graph, keys.probs, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))


def check_options(opts: PredictOptions) -> None:
    """Checks that need no files (used by the CLI before anything is opened)."""
    resolve_device(opts.device)
    if opts.memory_limit is not None:
        parse_size(opts.memory_limit)
    if opts.tile is not None and opts.overlap is not None:
        resolve_overlap(opts.overlap, opts.tile)


__all__ = ["OptionError", "PredictOptions", "PredictReport", "check_options", "predict", "predict_array"]
