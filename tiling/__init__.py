"""Tile geometry, blending, raster readers and writers: everything of tilewise that needs no torch."""

from .blend import Accumulator, Contribution, blend
from .errors import CheckpointError, InputError, OptionError, OutputError, TilewiseError, TilewiseWarning, WriteFailure
from .grid import Tile, TileGrid, axis_origins, resolve_overlap
from .normalize import Normalization
from .plan import AxisPlan, ChunkPlan, Span
from .readers import RasterInfo, RasterReader, open_raster
from .windows import BLEND_KINDS, window_2d, window_profile

__all__ = [
    "BLEND_KINDS",
    "Accumulator",
    "AxisPlan",
    "CheckpointError",
    "ChunkPlan",
    "Contribution",
    "InputError",
    "Normalization",
    "OptionError",
    "OutputError",
    "RasterInfo",
    "RasterReader",
    "Span",
    "Tile",
    "TileGrid",
    "TilewiseError",
    "TilewiseWarning",
    "WriteFailure",
    "axis_origins",
    "blend",
    "open_raster",
    "resolve_overlap",
    "window_2d",
    "window_profile",
]
