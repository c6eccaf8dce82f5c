"""GDAL's process settings for a run, kept here so that the pipeline configures no I/O library itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import rasterio


@contextlib.contextmanager
def gdal_block_cache(megabytes: int) -> Iterator[None]:
    """GDAL's block cache capped at ``megabytes`` inside the block (its default, 5 % of RAM, would let the reads
    and a COG's assembly hold blocks in proportion to the raster)."""
    with rasterio.Env(GDAL_CACHEMAX=megabytes):
        yield
