"""``predict``: one pass from input raster to output raster.

    reader  = open_raster(input)                      # windowed reads, validity mask
    grid    = TileGrid(...); plan = ChunkPlan(...)    # the global tile grid, cut into output chunks
    output  = RunOutput(path, ...)                    # a resumable work store next to the output
    graph   = build_graph(reader, plan, job, output)  # per chunk: read → model batches → blend → write
    run the graph (threads by default), then output.finalize()  # assemble COG / OME-TIFF / OME-Zarr / Zarr

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
import rasterio
from dask.diagnostics import ProgressBar
from dask.highlevelgraph import HighLevelGraph

from tiling.errors import InputError, OptionError
from tiling.grid import TileGrid, resolve_overlap
from tiling.masking import CoarseMask, make_mask, mask_scale
from tiling.normalize import Normalization
from tiling.plan import ChunkPlan
from tiling.readers import RasterReader, open_raster
from tiling.writers import OutputSpec, RunOutput, StoreLocation, check_outputs, output_format
from tiling.writers.workstore import RUN_KEY

from .budget import (
    ChunkCost,
    HeapGuard,
    ResourcePlan,
    keep_freed_memory,
    parse_size,
    plan_resources,
    release_free_memory,
)
from .cache import model_cache
from .checkpoint import Checkpoint, ModelCard, checkpoint_fingerprint, read_card
from .cluster import SchedulerChoice, connect, run_graph, total_threads
from .devices import check_precision, cpu_threads, resolve_device
from .graph import GraphKeys, RunStats, TileJob, build_graph
from .model import UNetConfig, activation_bytes_per_tile, macs_per_pixel, parameter_bytes
from .options import PredictOptions
from .products import check_products, write_products
from .runner import ModelSpec

#: Largest batch tried on a CPU. Batch 4 was at most 6 % faster per tile than batch 1 there, short of the
#: sizer's margin, and merely trying it raised a slide run's peak RSS from 812 to 1029 MiB.
CPU_MAX_BATCH = 2
GPU_MAX_BATCH = 64
#: Above this a CPU spends several times longer in the model than reading, blending and writing: a U-Net of
#: 1.6 k MAC/px takes 250 ns a pixel on one core, those take about 80 ns (the default U-Net: 46 k, 1.3 µs).
MODEL_BOUND_MACS_PER_PIXEL = 1000


@dataclass(frozen=True)
class RunSetup:
    """Everything decided before the first pixel is read."""

    reader: RasterReader
    card: ModelCard
    grid: TileGrid
    plan: ChunkPlan
    resources: ResourcePlan
    job: TileJob
    mask: CoarseMask | None = None


@dataclass
class PredictReport:
    """What a run did."""

    outputs: list[Path]
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
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    chunks_unread: int = 0
    valid_fraction: float | None = None
    mask: str | None = None
    pixel_size_um: tuple[float, float] | None = None
    polygons: int | None = None

    @property
    def skipped_fraction(self) -> float:
        """Share of the grid's tiles that were not run through the model (outside the mask or nodata)."""
        return self.tiles_skipped / self.tiles_total if self.tiles_total else 0.0


def _options(options: PredictOptions | None, overrides: dict[str, Any]) -> PredictOptions:
    return (options or PredictOptions()).updated(**overrides)


ModelSource = str | os.PathLike[str] | Checkpoint


def max_batch_size(device: str, opts: PredictOptions) -> int:
    return opts.batch_size or (CPU_MAX_BATCH if device == "cpu" else GPU_MAX_BATCH)


def plan_memory(
    grid: TileGrid,
    model: UNetConfig,
    bands: int,
    dtype: str,
    device: str,
    opts: PredictOptions,
    distributed: bool = False,
) -> ResourcePlan:
    """Chunk size and chunks in flight for a run of ``model`` over ``grid`` within the memory limit.

    Chunks are balanced among workers (``budget.balanced_first``) only where the model's work sets the run's
    length and the workers are separate processes: threads of one process share their forward passes through
    the runner's pool, so a thread left with the last chunk is not left alone with it.
    """
    batch_bytes = max_batch_size(device, opts) * activation_bytes_per_tile(model, grid.tile)
    on_cpu = device == "cpu"
    model_bound = not device.startswith("cuda") and macs_per_pixel(model) >= MODEL_BOUND_MACS_PER_PIXEL
    return plan_resources(
        grid,
        ChunkCost(bands, model.classes, np.dtype(dtype).itemsize),
        model_bytes=parameter_bytes(model) + (0 if on_cpu else batch_bytes // 8),  # GPU: host-side batch buffers
        memory_limit=parse_size(opts.memory_limit) if opts.memory_limit is not None else None,
        chunk=opts.chunk,
        workers=opts.workers,
        worker_bytes=batch_bytes if on_cpu else 0,  # on a CPU every worker runs its own forward passes
        balance=distributed and model_bound,
    )


def prepare(input: str | os.PathLike[str], model: ModelSource, opts: PredictOptions, here: bool = True) -> RunSetup:
    """Open the input, read the model card and plan tiles, chunks and memory; loads no weights.

    ``here=False``: the model runs on cluster workers, which resolve the device themselves.
    """
    device = resolve_device(opts.device, here)
    check_precision(opts.precision, device)
    card = model.card if isinstance(model, Checkpoint) else read_card(model)
    tile = opts.tile or card.tile_size
    card.model.check_tile(tile)
    overlap = resolve_overlap(opts.overlap, tile)

    reader = open_raster(input, opts.bands or card.bands, opts.level, opts.mpp, opts.mpp_tolerance)
    try:
        bands = len(reader.bands)
        if bands != card.model.in_channels:
            raise InputError(
                f"the model takes {card.model.in_channels} band(s) but {len(reader.bands)} are selected from "
                f"{reader.info.path} ({reader.info.count} available); choose them with --bands"
            )
        normalization = (
            Normalization.from_mapping(opts.normalization, bands) if opts.normalization else card.normalization
        )
        grid = TileGrid(reader.info.height, reader.info.width, tile, overlap)
        resources = plan_memory(grid, card.model, bands, reader.info.dtype, device, opts, distributed=not here)
        max_batch = max_batch_size(device, opts)
        settings = {
            "device": device,
            "precision": opts.precision,
            "channels_last": opts.channels_last is not False,
            "tta": opts.tta,
            "batch_size": opts.batch_size,
            "max_batch": max_batch,
        }
        if isinstance(model, Checkpoint):
            spec = ModelSpec.for_model(model, **settings)
        else:
            spec = ModelSpec.for_checkpoint(model, **settings)
        job = TileJob(tile, opts.blend, float(opts.sigma), normalization, card.model.classes, spec, opts.min_valid)
        plan = ChunkPlan(grid, (resources.chunk, resources.chunk))
        scale = opts.mask_scale or mask_scale(grid.height, grid.width, tile)
        mask = make_mask(reader, opts.mask, scale, opts.tissue_channel, opts.tissue_threshold)
    except BaseException:
        reader.close()
        raise
    return RunSetup(reader, card, grid, plan, resources, job, mask)


def _recorded_chunk(work: StoreLocation) -> int | None:
    """The chunk size of the interrupted run whose work store is ``work`` (a resumed run must keep it)."""
    try:
        return int(work.open_group(mode="r").attrs[RUN_KEY]["chunk"])
    except Exception:  # no readable store: nothing to keep (reopening it later names the problem)
        return None


def run_record(input: str | os.PathLike[str], model: ModelSource, setup: RunSetup, opts: PredictOptions, fmt: str):
    """What makes a run this run: a resumed run must match it exactly (JSON-able)."""
    stat = Path(input).stat()
    job, grid = setup.job, setup.grid
    return {
        "input": str(Path(input).resolve()),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "model": f"in-memory:{id(model)}" if isinstance(model, Checkpoint) else checkpoint_fingerprint(model),
        "bands": list(setup.reader.bands),
        "shape": [grid.height, grid.width],
        "tile": grid.tile,
        "overlap": grid.overlap,
        "blend": job.blend,
        "sigma": job.sigma,
        "normalization": job.normalization.to_mapping(),
        "min_valid_fraction": job.min_valid_fraction,
        "tta": opts.tta,
        "precision": opts.precision,
        "output_kind": opts.output_kind,
        "probs_dtype": opts.probs_dtype,
        "threshold": opts.threshold,
        "chunk": setup.plan.chunk[0],
        "format": fmt,
    }


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
    output = Path(output)
    fmt = output_format(output, opts.format)
    choice = SchedulerChoice.parse(opts.scheduler, opts.cluster)
    if choice.distributed and isinstance(model, Checkpoint):
        raise OptionError("a model held in memory runs on local threads only; give a checkpoint path for a cluster")
    # Fail before any work on an unusable destination.
    check_outputs(output, fmt, OutputSpec(opts.output_kind, opts.probs_dtype, opts.threshold), opts.overwrite)
    check_products(opts, output)
    work = StoreLocation.for_output(output, opts.work_dir)
    if opts.resume and opts.chunk is None:
        opts = opts.updated(chunk=_recorded_chunk(work))
    began = time.perf_counter()
    setup = prepare(input, model, opts, here=not choice.distributed)
    reader, plan, job = setup.reader, setup.plan, setup.job
    workers, extra = setup.resources.workers, {}
    try:
        spec = OutputSpec(opts.output_kind, opts.probs_dtype, opts.threshold, setup.card.class_names)
        out = RunOutput(output, fmt, spec, reader.info, job.classes, work)
        done = out.start(plan.chunk, plan.shape, run_record(input, model, setup, opts, fmt), opts.resume)
        keep_work, finished = False, False
        try:
            keys = GraphKeys(uuid.uuid4().hex[:12])
            # One small GDAL block cache for the run and the assembly: GDAL's default (5 % of RAM) would let a COG's
            # assembly grow with the raster (16384²: 409 MiB more while GDAL built the overviews, 74 MiB capped).
            with rasterio.Env(GDAL_CACHEMAX=setup.resources.gdal_cache_mb):
                if choice.distributed:
                    with connect(choice) as client:
                        workers = total_threads(client)
                        extra = {"dashboard": client.dashboard_link, "scheduler": client.scheduler.address}
                        if opts.progress:
                            print(f"tilewise: Dask dashboard at {client.dashboard_link}", file=sys.stderr)
                        # No throttle here: the distributed scheduler queues root tasks by itself.
                        dsk = build_graph(reader, plan, job, keys, out, None, frozenset(done), setup.mask)
                        model_keys = {k for k in dsk if isinstance(k, tuple) and k[0] == keys.infer}
                        gpu = job.model.device.startswith("cuda")
                        report = Path(opts.report) if opts.report else None
                        stats = run_graph(client, dsk, model_keys, keys.done, gpu, opts.progress, report)
                else:
                    heap = HeapGuard(ceiling=setup.resources.estimated_peak)
                    dsk = build_graph(reader, plan, job, keys, out, workers, frozenset(done), setup.mask, heap)
                    keep_freed_memory()  # before the run's threads take their heaps
                    threads = cpu_threads(workers) if job.model.device == "cpu" else contextlib.nullcontext()
                    with threads:
                        stats = _run(dsk, keys.done, workers, opts.progress)
                if stats.tiles.run == 0 and not done:
                    where = f"inside the {setup.mask.source} mask" if setup.mask else "(all nodata, masked or NaN)"
                    raise InputError(f"{reader.info.path} has no valid pixels {where}")
                release_free_memory()  # what the chunks freed, before the assembly allocates its own
                out.finalize()
            finished = True
        except KeyboardInterrupt:
            keep_work = True  # an interrupted run can be resumed
            raise
        finally:
            if not finished:
                out.abort(keep_work=keep_work)
        products = write_products(opts, reader, setup.mask, output, fmt, spec)
    finally:
        reader.close()
    return PredictReport(
        outputs=[*out.paths, *products.paths],
        format=fmt,
        tiles_total=setup.grid.n_tiles,
        tiles_run=stats.tiles.run,
        tiles_skipped=stats.tiles.skipped,
        chunks=plan.n_chunks,
        chunks_computed=stats.chunks_written,
        chunk=plan.chunk[0],
        workers=workers,
        batch_size=None if choice.distributed else model_cache().runner(job.model).sizer.chosen,
        device=job.model.device,
        seconds=time.perf_counter() - began,
        resumed=bool(done),
        chunks_unread=stats.tiles.unread,
        valid_fraction=setup.mask.valid_fraction if setup.mask else None,
        mask=setup.mask.source if setup.mask else None,
        pixel_size_um=reader.info.pixel_size_um,
        polygons=products.polygons,
        extra=extra,
    )


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
    setup = prepare(input, model, _options(options, overrides))
    keys = GraphKeys(uuid.uuid4().hex[:12])
    dsk = build_graph(setup.reader, setup.plan, setup.job, keys, lookahead=setup.resources.workers, mask=setup.mask)
    graph = HighLevelGraph.from_collections(keys.probs, dsk, dependencies=[])
    chunks = ((setup.job.classes,), *setup.plan.chunks)
    return da.Array(graph, keys.probs, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))


def check_options(opts: PredictOptions) -> None:
    """Checks that need no files (used by the CLI before anything is opened)."""
    resolve_device(opts.device)
    if opts.memory_limit is not None:
        parse_size(opts.memory_limit)
    if opts.tile is not None and opts.overlap is not None:
        resolve_overlap(opts.overlap, opts.tile)


__all__ = ["OptionError", "PredictOptions", "PredictReport", "check_options", "predict", "predict_array"]
