"""The run plan: everything decided before the first pixel is read, built once from the options.

    plan = plan_run(input, model, options, output)   # reader, tile grid, chunk plan, resources, mask, output
    predict(...) runs it; predict_array(...) reads its probabilities lazily; ``tilewise info`` describes it

Each option is parsed and checked once, by ``PredictOptions``; from here on it is a domain value owned by one
object: the tile and overlap by the ``TileGrid``, the chunk size by the ``ResourcePlan`` (which chose it, or took
``--chunk``) and then the ``ChunkPlan``, the device and precision by the ``ModelSpec``, the output path, format
and kind by the ``RunOutput``. A resumed run keeps the chunk size of the run it continues (recorded in its work
store) unless ``--chunk`` says otherwise; the work store then compares the two runs' records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tiling.errors import InputError, option
from tiling.grid import TileGrid, resolve_overlap
from tiling.masking import CoarseMask, make_mask, mask_scale
from tiling.normalize import Normalization
from tiling.plan import ChunkPlan
from tiling.readers import RasterReader, open_raster, read_cache_bytes
from tiling.storage import StoragePath
from tiling.writers import (
    Destination,
    OutputContent,
    OutputSpec,
    RunOutput,
    StoreLocation,
    output_format,
    output_layers,
    recorded_run,
)

from .backends import check_backend
from .budget import ModelMemory, ResourcePlan, parse_size, plan_resources
from .checkpoint import Checkpoint, ModelCard, checkpoint_fingerprint, read_card, weights_fingerprint
from .devices import check_precision, resolve_device
from .graph import TileJob
from .layout import tile_input, tile_layout
from .memory_model import CPU_FORWARD_SLACK, CPU_NS_PER_MAC, ChunkCost, ChunkSpeed, encoded_bytes
from .model import UNetConfig, activation_bytes_per_tile, macs_per_pixel, parameter_bytes
from .options import PredictOptions
from .products import check_products
from .runner import ModelSpec

#: Largest batch tried on a CPU. Batch 4 was at most 6 % faster per tile than batch 1 there, short of the
#: sizer's margin, and merely trying it raised a slide run's peak RSS from 812 to 1029 MiB.
CPU_MAX_BATCH = 2
GPU_MAX_BATCH = 64
#: Above this a CPU spends several times longer in the model than reading, blending and writing: a U-Net of
#: 1.6 k MAC/px takes 250 ns a pixel on one core, those take about 80 ns (the default U-Net: 46 k, 1.3 µs).
MODEL_BOUND_MACS_PER_PIXEL = 1000
#: Tile planned for when no model says otherwise (``tilewise info`` without a model).
DEFAULT_TILE = 256

ModelSource = str | os.PathLike[str] | Checkpoint


@dataclass(frozen=True)
class RunPlan:
    """One run, planned: what it reads, how it tiles and chunks the raster, the memory it plans for, what every
    chunk task does, where it may compute, and (for ``predict``) what it writes. Holds the open reader."""

    input: str
    reader: RasterReader
    card: ModelCard
    grid: TileGrid
    chunks: ChunkPlan
    resources: ResourcePlan
    job: TileJob
    mask: CoarseMask | None
    output: RunOutput | None
    #: What identifies the model in the run record: its weights' checksum (or the object, held in memory).
    model_id: str

    def record(self) -> dict[str, Any]:
        """What makes a run this run: a resumed run must match it exactly (JSON-able)."""
        job, grid = self.job, self.grid
        record = {
            **_input_record(self.input),
            "model": self.model_id,
            "bands": list(self.reader.bands),
            "shape": [grid.height, grid.width],
            "tile": grid.tile,
            "overlap": grid.overlap,
            "blend": job.blend,
            "sigma": job.sigma,
            "normalization": job.normalization.to_mapping(),
            "min_valid_fraction": job.min_valid_fraction,
            "tta": job.model.tta,
            "precision": job.model.precision,
            "backend": job.model.backend,
            "chunk": self.chunks.chunk[0],
        }
        if self.output is not None:
            spec = self.output.format.spec
            instances = self.output.content.instances
            record.update(
                output_kind=spec.kind,
                probs_dtype=spec.probs_dtype,
                threshold=spec.threshold,
                format=self.output.format.name,
                instances=None if instances is None else instances.to_mapping(),
            )
        return record

    def close(self) -> None:
        self.reader.close()
        if self.output is not None:
            self.output.destination.discard()  # an output uploaded to a URL: its scratch copy

    def __enter__(self) -> RunPlan:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _input_record(input: str) -> dict[str, Any]:
    """What identifies the input's version: its path, size and modification time; a URL's size and ETag."""
    location = StoragePath.of(input)
    version = location.version()
    if location.is_remote:
        return {"input": location.url, "input_size": version["size"], "input_etag": version["etag"]}
    return {"input": str(Path(input).resolve()), "input_size": version["size"], "input_mtime_ns": version["mtime_ns"]}


def plan_run(
    input: str | os.PathLike[str],
    model: ModelSource | None,
    opts: PredictOptions,
    output: str | os.PathLike[str] | None = None,
    distributed: bool = False,
) -> RunPlan:
    """Open the input, read the model card and plan tiles, chunks, memory and the output; loads no weights.

    ``output`` None plans a run whose probabilities are read in memory (``predict_array``, ``tilewise info``).
    ``distributed``: the model runs on cluster workers, which resolve the device themselves. ``model`` None
    plans for a default U-Net over the selected bands (``tilewise info`` without a model; it cannot run).
    """
    device = resolve_device(opts.device, here=not distributed)
    check_precision(opts.precision, device)
    check_backend(opts.backend, device, opts.precision)
    card = None if model is None else model.card if isinstance(model, Checkpoint) else read_card(model)
    if card is None:
        card = _default_card(input, opts)
    tile = opts.tile or card.tile_size
    card.model.check_tile(tile)
    overlap = resolve_overlap(opts.overlap, tile)
    fmt, work, chunk, destination = None, None, opts.chunk, None
    if output is not None:
        spec = OutputSpec(opts.output_kind, opts.probs_dtype, opts.threshold)
        destination = Destination.of(output, opts.scratch_dir)
        fmt = output_format(destination.assembly_path, spec, opts.format)
        destination.check(fmt, opts.overwrite)  # before any work: an unusable destination fails now
        check_products(opts, destination.assembly_path)
        work = destination.in_place_at(fmt, StoreLocation.for_output(destination.target, opts.work_dir), opts.resume)
        if opts.resume and chunk is None:
            chunk = _recorded_chunk(work)

    reader = open_raster(
        input,
        opts.bands or card.bands,
        opts.level,
        opts.mpp,
        opts.mpp_tolerance,
        input_mpp=opts.input_mpp,
        model_mpp=card.pixel_size_um,
    )
    try:
        bands = len(reader.bands)
        if bands != card.model.in_channels:
            raise InputError(
                f"the model takes {card.model.in_channels} band(s) but {bands} are selected from "
                f"{reader.info.path} ({reader.info.count} available); choose them with {option('bands', '(…)')}"
            )
        normalization = (
            Normalization.from_mapping(opts.normalization, bands) if opts.normalization else card.normalization
        )
        layout = tile_layout(card.model, reader.info.height, reader.info.width, tile, overlap, opts.blend)
        grid = layout.grid
        resources = plan_memory(
            grid,
            card.model,
            bands,
            reader.info.dtype,
            device,
            opts,
            chunk,
            distributed,
            None if fmt is None else fmt.spec,
            read_cache_bytes(reader),
        )
        spec = _model_spec(model, device, opts)
        job = TileJob(
            tile, layout.blend, float(opts.sigma), normalization, card.model.classes, spec, opts.min_valid, layout.input
        )
        chunks = ChunkPlan(grid, (resources.chunk, resources.chunk))
        scale = opts.mask_scale or mask_scale(grid.height, grid.width, tile)
        mask = make_mask(reader, opts.mask, scale, opts.tissue_channel, opts.tissue_threshold)
        run_output = None
        if fmt is not None and work is not None:
            layers = output_layers(fmt.spec, card.class_names, card.model.classes)
            instances = card.instance_spec if fmt.spec.writes_instances else None
            if instances is not None and opts.min_object_area is not None:
                instances = replace(instances, min_area=opts.min_object_area)
            content = OutputContent(reader.info, layers, card.class_names, instances, fmt.spec.threshold)
            run_output = RunOutput(fmt, content, work, destination)
    except BaseException:
        reader.close()
        raise
    model_id = _model_id(model)
    return RunPlan(str(input), reader, card, grid, chunks, resources, job, mask, run_output, model_id)


def _default_card(input: str | os.PathLike[str], opts: PredictOptions) -> ModelCard:
    """The card of a default U-Net over the bands ``opts`` selects from ``input``, for planning only."""
    reader = open_raster(input, opts.bands, opts.level, opts.mpp, opts.mpp_tolerance, input_mpp=opts.input_mpp)
    bands = len(reader.bands)
    reader.close()
    identity = Normalization((0.0,) * bands, (1.0,) * bands)
    return ModelCard(UNetConfig(in_channels=bands), identity, ("background", "foreground"), DEFAULT_TILE)


def _model_id(model: ModelSource | None) -> str:
    if model is None:
        return "none"
    # A model held in memory is its weights too: a run interrupted with it resumes with its checkpoint's path.
    return weights_fingerprint(model.model) if isinstance(model, Checkpoint) else checkpoint_fingerprint(model)


def _model_spec(model: ModelSource | None, device: str, opts: PredictOptions) -> ModelSpec:
    settings: dict[str, Any] = {
        "device": device,
        "precision": opts.precision,
        "channels_last": opts.channels_last is not False,
        "tta": opts.tta,
        "backend": opts.backend,
        "batch_size": opts.batch_size,
        "max_batch": max_batch_size(device, opts.batch_size),
    }
    if model is None:
        return ModelSpec(checkpoint="", fingerprint="none", **settings)
    if isinstance(model, Checkpoint):
        return ModelSpec.for_model(model, **settings)
    return ModelSpec.for_checkpoint(model, **settings)


def _recorded_chunk(work: StoreLocation) -> int | None:
    """The chunk size of the interrupted run whose work store is ``work`` (a resumed run keeps it)."""
    if not work.exists():
        return None
    try:
        return int(recorded_run(work)["chunk"])
    except (KeyError, TypeError, ValueError):  # a sealed store holds only a digest; reopening it checks the run
        return None


def max_batch_size(device: str, batch_size: int | None) -> int:
    return batch_size or (CPU_MAX_BATCH if device == "cpu" else GPU_MAX_BATCH)


def plan_memory(
    grid: TileGrid,
    model: UNetConfig,
    bands: int,
    dtype: str,
    device: str,
    opts: PredictOptions,
    chunk: int | None,
    distributed: bool = False,
    output: OutputSpec | None = None,
    read_cache: int = 0,
) -> ResourcePlan:
    """Chunk size and chunks in flight for a run of ``model`` over ``grid`` within the memory limit.

    The chunk is the smallest that keeps the run at full speed: on a CPU the model's work per pixel
    (``macs_per_pixel``) sets how small it may be; on a GPU the pipeline's, and chunks stay large. Chunks are
    balanced among workers (``budget.balanced_sizes``) only where the model's work sets the run's length and
    the workers are separate processes: threads of one process share their forward passes through the runner's
    pool, so a thread left with the last chunk is not left alone with it. ``read_cache``: what the process keeps
    of a remote input's fetched bytes (``tiling.readers.read_cache_bytes``).
    """
    max_batch = max_batch_size(device, opts.batch_size)
    input_size = tile_input(model, grid.tile).input_size(grid.tile)  # a valid model's tiles read their context
    on_cpu = device == "cpu"
    per_tile = activation_bytes_per_tile(model, input_size)
    if on_cpu:  # every forward thread runs its own batches
        per_forward = int(CPU_FORWARD_SLACK * max_batch * per_tile)
    else:  # the host side of a batch: its input twice (staged while the previous one runs) and its probabilities
        staged = 2 * input_size**2 * (bands * np.dtype(dtype).itemsize + 1)
        per_forward = max_batch * (staged + grid.tile**2 * 4 * model.classes)
    model_bound = not device.startswith("cuda") and macs_per_pixel(model) >= MODEL_BOUND_MACS_PER_PIXEL
    model_ns = CPU_NS_PER_MAC * macs_per_pixel(model) if on_cpu else 0.0
    return plan_resources(
        grid,
        ChunkCost(
            bands, model.classes, np.dtype(dtype).itemsize, encoded_bytes(output, model.classes), input_size - grid.tile
        ),
        ModelMemory(parameter_bytes(model), per_forward),
        speed=ChunkSpeed(model_ns, max_batch),
        memory_limit=parse_size(opts.memory_limit) if opts.memory_limit is not None else None,
        chunk=chunk,
        workers=opts.workers,
        balance=distributed and model_bound,
        read_cache=read_cache,
    )
