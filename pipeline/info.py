"""``tilewise info``: what a raster is and how a run over it would be planned (the run's own ``RunPlan``)."""

from __future__ import annotations

from tiling.readers import RasterInfo, RasterReader, ResampledReader
from tiling.writers.disk import mib

from .budget import ResourcePlan
from .options import PredictOptions
from .run_plan import RunPlan, plan_run


def raster_lines(info: RasterInfo, bands: tuple[int, ...]) -> list[str]:
    names = ", ".join(f"{b}: {(info.band_names[b - 1] if info.band_names else None) or 'unnamed'}" for b in bands)
    lines = [
        f"input       {info.path} ({info.format})",
        f"size        {info.width} x {info.height} pixels (width x height), {info.count} band(s), {info.dtype}",
        f"bands used  {names}",
        f"nodata      {'none' if info.nodata is None else info.nodata}",
    ]
    if info.crs:
        lines.append(f"crs         {info.crs_name}")
    if info.transform:
        a, b, c, d, e, f = info.transform
        lines.append(f"transform   origin ({c!r}, {f!r}), pixel ({a!r}, {e!r}), rotation ({b!r}, {d!r})")
    if info.pixel_size_um:
        lines.append(f"pixel size  {info.pixel_size_um[1]:.4g} x {info.pixel_size_um[0]:.4g} µm")
    if not info.crs and not info.pixel_size_um:
        lines.append("georef      none (pixel coordinates only)")
    return lines


def level_lines(reader: RasterReader) -> list[str]:
    """A slide's pyramid levels and which one is read (nothing for a raster without levels)."""
    levels = getattr(reader, "levels", ())
    if not levels:
        return []
    lines = [f"{'levels' if i == 0 else '':<12}{level.describe()}" for i, level in enumerate(levels)]
    read = f"level {getattr(reader, 'level', 0)}"
    if isinstance(reader, ResampledReader):
        fy, fx = reader.factor
        read += f", area-resampled by {fx:.4g}" + (f" x {fy:.4g}" if abs(fx - fy) > 1e-9 else "")
    return [*lines, f"reading     {read}"]


def plan_lines(plan: RunPlan, model: str | None) -> list[str]:
    grid, chunks, resources = plan.grid, plan.chunks, plan.resources
    rows, cols = grid.shape
    chunk_rows, chunk_cols = chunks.shape
    lines = []
    if plan.mask is not None:
        mask = plan.mask
        lines.append(f"mask        {mask.source}: {mask.valid_fraction:.1%} of the raster, cells of {mask.scale} px")
    in_channels = plan.card.model.in_channels
    window = plan.job.input
    context = (
        f", reading {window.before} + {window.after} px of context, mirrored at the border" if window.before else ""
    )
    lines += [
        f"model       {model or f'none given (planning for a default U-Net, {in_channels} band(s) in)'}",
        f"tiles       {grid.tile} px, overlap {grid.overlap} px, stride {grid.stride} px{context}: "
        f"{cols} x {rows} = {grid.n_tiles} tiles",
        f"chunks      {chunks.chunk[0]} px: {chunk_cols} x {chunk_rows} = {chunks.n_chunks} chunks, "
        f"{resources.workers} in flight",
        f"memory      about {resources.estimated_peak / 2**20:,.0f} MiB at peak (limit {mib(resources.memory_limit)})",
        f"{'':<12}{memory_terms(resources)}",
    ]
    if plan.output is not None:
        fmt = plan.output.format
        lines.append(f"output      {', '.join(str(name) for name in plan.output.names)} ({fmt.name}, {fmt.spec.kind})")
        for check in plan.output.disk_checks(chunks.chunk[0], resume=False):
            verdict = "fits" if check.fits else "cannot fit" if check.cannot_fit else "may not fit"
            lines.append(f"disk        {check.describe()}: {verdict}")
    return lines


def memory_terms(resources: ResourcePlan) -> str:
    """What the peak is made of: ``process 290 MiB + model 7.4 MiB + forward passes 2 × 486 MiB + ...``."""
    terms = [
        f"{name} {count} × {mib(size)}" if count != 1 else f"{name} {mib(size)}"
        for name, count, size in resources.estimate.terms()
    ]
    return " + ".join(terms)


def describe(input: str, model: str | None, opts: PredictOptions, output: str | None = None) -> str:
    """A readable description of ``input`` and the plan of a run with ``model`` and ``opts`` (writing ``output``
    when given: its files and what they need on disk against the free space)."""
    with plan_run(input, model, opts.updated(overwrite=True), output) as plan:
        reader = plan.reader
        return "\n".join([*raster_lines(reader.info, reader.bands), *level_lines(reader), *plan_lines(plan, model)])
