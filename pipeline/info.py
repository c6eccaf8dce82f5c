"""``tilewise info``: what a raster is and how a run over it would be planned."""

from __future__ import annotations

from rasterio.crs import CRS

from tiling.grid import TileGrid, resolve_overlap
from tiling.masking import make_mask, mask_scale
from tiling.readers import RasterInfo, RasterReader, ResampledReader, open_raster

from .checkpoint import read_card
from .devices import resolve_device
from .model import UNetConfig
from .options import PredictOptions
from .prediction import plan_memory

DEFAULT_TILE = 256


def _crs_name(wkt: str) -> str:
    crs = CRS.from_wkt(wkt)
    return crs.to_string() if crs.to_epsg() else crs.to_wkt()[:80] + "…"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def raster_lines(info: RasterInfo, bands: tuple[int, ...]) -> list[str]:
    names = ", ".join(f"{b}: {info.band_names[b - 1] or '-'}" if info.band_names else str(b) for b in bands)
    lines = [
        f"input       {info.path} ({info.format})",
        f"size        {info.height} x {info.width} pixels (rows x cols), {info.count} band(s), {info.dtype}",
        f"bands used  {names}",
        f"nodata      {'none' if info.nodata is None else info.nodata}",
    ]
    if info.crs:
        lines.append(f"crs         {_crs_name(info.crs)}")
    if info.transform:
        a, b, c, d, e, f = info.transform
        lines.append(f"transform   origin ({c:.6g}, {f:.6g}), pixel ({a:.6g}, {e:.6g}), rotation ({b:.3g}, {d:.3g})")
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


def describe(input: str, model: str | None, opts: PredictOptions) -> str:
    """A readable description of ``input`` and the tile plan of a run with ``model`` and ``opts``."""
    card = read_card(model) if model else None
    bands = opts.bands or (card.bands if card else None)
    reader = open_raster(input, bands, opts.level, opts.mpp, opts.mpp_tolerance)
    try:
        info, bands = reader.info, reader.bands
        config = card.model if card else UNetConfig(in_channels=len(bands))
        tile = opts.tile or (card.tile_size if card else DEFAULT_TILE)
        config.check_tile(tile)
        grid = TileGrid(info.height, info.width, tile, resolve_overlap(opts.overlap, tile))
        scale = opts.mask_scale or mask_scale(info.height, info.width, tile)
        mask = make_mask(reader, opts.mask, scale, opts.tissue_channel, opts.tissue_threshold)
        levels = level_lines(reader)
    finally:
        reader.close()
    plan = plan_memory(grid, config, len(bands), info.dtype, resolve_device(opts.device), opts)
    rows, cols = grid.shape
    chunk_rows, chunk_cols = -(-info.height // plan.chunk), -(-info.width // plan.chunk)
    lines = [*raster_lines(info, bands), *levels]
    if mask is not None:
        lines.append(f"mask        {mask.source}: {mask.valid_fraction:.1%} of the raster, cells of {mask.scale} px")
    lines += [
        f"model       {model or f'none given (planning for a default U-Net, {len(bands)} band(s) in)'}",
        f"tiles       {tile} px, overlap {grid.overlap} px, stride {grid.stride} px: "
        f"{rows} x {cols} = {grid.n_tiles} tiles",
        f"chunks      {plan.chunk} px: {chunk_rows} x {chunk_cols} = {chunk_rows * chunk_cols} chunks, "
        f"{plan.workers} in flight",
        f"memory      about {_mib(plan.estimated_peak)} at peak ({_mib(plan.per_chunk)} per chunk in flight; "
        f"limit {_mib(plan.memory_limit)})",
    ]
    return "\n".join(lines)
