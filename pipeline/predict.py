"""``predict``: one pass from input raster to output raster.

    reader  = open_raster(input)                       # windowed reads, validity mask
    grid    = TileGrid(...); plan = ChunkPlan(...)     # the global tile grid, cut into output chunks
    outputs = open_outputs(output, ...)                # partial files, moved into place at the end
    graph   = probability_graph(...) + write_graph(...)  # read → model batches → blend → write, per chunk
    run the graph (threads by default)

A pixel of the input is read by the chunk task that owns the tiles covering it, goes through the model once per
covering tile, is blended with ``Σ w·p / Σ w`` in the chunk where it lies, and is written by that chunk's
write task.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
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
from tiling.writers import OutputSpec, check_outputs, open_outputs

from .budget import ChunkCost, ResourcePlan, parse_size, plan_resources
from .checkpoint import Checkpoint, ModelCard, read_card
from .devices import check_precision, resolve_device
from .graph import GraphKeys, TileJob, TileStats, build_graph
from .model import UNetConfig, activation_bytes_per_tile, parameter_bytes
from .options import PredictOptions
from .products import check_products, write_products
from .runner import ModelSpec, cpu_threads, get_runner

#: Largest batch tried on a CPU (batch 1 is usually fastest per tile there; more only costs memory).
CPU_MAX_BATCH = 4
GPU_MAX_BATCH = 64


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
    tiles_total: int
    tiles_run: int
    tiles_skipped: int
    chunks: int
    chunk: int
    workers: int
    batch_size: int | None
    device: str
    seconds: float
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
    grid: TileGrid, model: UNetConfig, bands: int, dtype: str, device: str, opts: PredictOptions
) -> ResourcePlan:
    """Chunk size and chunks in flight for a run of ``model`` over ``grid`` within the memory limit."""
    batch_bytes = max_batch_size(device, opts) * activation_bytes_per_tile(model, grid.tile)
    on_cpu = device == "cpu"
    return plan_resources(
        grid,
        ChunkCost(bands, model.classes, np.dtype(dtype).itemsize),
        model_bytes=parameter_bytes(model) + (0 if on_cpu else batch_bytes // 8),  # GPU: host-side batch buffers
        memory_limit=parse_size(opts.memory_limit) if opts.memory_limit is not None else None,
        chunk=opts.chunk,
        workers=opts.workers,
        worker_bytes=batch_bytes if on_cpu else 0,  # on a CPU every worker runs its own forward passes
    )


def prepare(input: str | os.PathLike[str], model: ModelSource, opts: PredictOptions) -> RunSetup:
    """Open the input, read the model card and plan tiles, chunks and memory; loads no weights."""
    device = resolve_device(opts.device)
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
        resources = plan_memory(grid, card.model, bands, reader.info.dtype, device, opts)
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


def predict(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: ModelSource,
    options: PredictOptions | None = None,
    **overrides: Any,
) -> PredictReport:
    """Segment ``input`` with ``model`` (a checkpoint path, or a loaded ``Checkpoint``) and write ``output``
    (.tif or .zarr).

    ``overrides`` are ``PredictOptions`` fields, e.g. ``predict("scene.tif", "mask.tif", "model.safetensors",
    tile=256, output_kind="both")``. Nothing appears at ``output`` unless the run succeeds.
    """
    opts = _options(options, overrides)
    output = Path(output)
    spec = OutputSpec(opts.output_kind, opts.probs_dtype, opts.threshold)
    check_outputs(output, spec, opts.overwrite)  # fail before any work on an unusable destination
    check_products(opts, output)
    began = time.perf_counter()
    setup = prepare(input, model, opts)
    reader, plan, job = setup.reader, setup.plan, setup.job
    try:
        spec = OutputSpec(opts.output_kind, opts.probs_dtype, opts.threshold, setup.card.class_names)
        outputs = open_outputs(output, reader.info, spec, job.classes, plan.chunk, opts.overwrite)
        try:
            keys = GraphKeys(uuid.uuid4().hex[:12])
            dsk = build_graph(reader, plan, job, keys, outputs, lookahead=setup.resources.workers, mask=setup.mask)
            threads = cpu_threads(setup.resources.workers) if job.model.device == "cpu" else contextlib.nullcontext()
            with threads, rasterio.Env(GDAL_CACHEMAX=setup.resources.gdal_cache_mb):
                stats = _run(dsk, keys.done, setup.resources.workers, opts.progress)
            if stats.run == 0:
                where = f"inside the {setup.mask.source} mask" if setup.mask else "(all nodata, masked or NaN)"
                raise InputError(f"{reader.info.path} has no valid pixels {where}")
            outputs.commit()
        except BaseException:
            outputs.abort()
            raise
        products = write_products(opts, reader, setup.mask, output, spec)
    finally:
        reader.close()
    runner = get_runner(job.model)
    return PredictReport(
        outputs=[*outputs.paths, *products.paths],
        tiles_total=setup.grid.n_tiles,
        tiles_run=stats.run,
        tiles_skipped=stats.skipped,
        chunks=plan.n_chunks,
        chunk=plan.chunk[0],
        workers=setup.resources.workers,
        batch_size=runner.sizer.chosen,
        device=job.model.device,
        seconds=time.perf_counter() - began,
        chunks_unread=stats.unread,
        valid_fraction=setup.mask.valid_fraction if setup.mask else None,
        mask=setup.mask.source if setup.mask else None,
        pixel_size_um=reader.info.pixel_size_um,
        polygons=products.polygons,
    )


def _run(dsk: dict[Any, Any], key: Any, workers: int, progress: bool) -> TileStats:
    """Run the graph on the local threaded scheduler."""
    with dask.config.set({"optimization.fuse.active": False}):
        if progress:
            with ProgressBar(out=sys.stderr, dt=0.5):
                return dask.threaded.get(dsk, key, num_workers=workers)
        return dask.threaded.get(dsk, key, num_workers=workers)


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
