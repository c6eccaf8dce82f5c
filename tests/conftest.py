"""Shared fixtures: tiny checkpoints, small generated rasters, and the path to the real data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from pipeline import ModelCard, UNetConfig, build_model, save_checkpoint
from pipeline.cache import model_cache
from tiling import Normalization

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason (fail it where ``TILEWISE_REAL_DATA=required``,
    as CI sets it: CI has the data, so a skip there would hide a test that never ran)."""
    path = SHARED_DATA / relative
    if not path.exists():
        reason = f"real data {relative} is not available (expected under {SHARED_DATA})"
        if os.environ.get("TILEWISE_REAL_DATA") == "required":
            pytest.fail(reason + "; TILEWISE_REAL_DATA=required")
        pytest.skip(reason)
    return path


@pytest.fixture(autouse=True)
def _fresh_runners():
    """Each test loads its own models (tests rewrite checkpoints at the same paths)."""
    model_cache().release()
    yield
    model_cache().release()


def make_checkpoint(
    path: Path,
    in_channels: int = 3,
    classes: int = 1,
    tile: int = 64,
    depth: int = 2,
    seed: int = 0,
    base_width: int = 4,
    **config: object,
) -> Path:
    """A tiny random U-Net (base width 4 unless asked) saved as a tilewise checkpoint."""
    torch.manual_seed(seed)
    cfg = UNetConfig(in_channels, classes, base_width, depth, **config)  # type: ignore[arg-type]
    names = ("background", "foreground") if classes == 1 else tuple(f"class{i}" for i in range(classes))
    card = ModelCard(cfg, Normalization((100.0,) * in_channels, (50.0,) * in_channels), names, tile)
    return save_checkpoint(path, build_model(cfg), card)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "tiny.safetensors")


def write_geotiff(
    path: Path,
    data: np.ndarray,
    nodata: float | None = None,
    crs: str | None = "EPSG:32618",
    tiled: bool = True,
    **profile: object,
) -> Path:
    """Write (bands, rows, cols) ``data`` as a GeoTIFF (tiled 64 px, deflate)."""
    bands, rows, cols = data.shape
    options: dict[str, object] = {"compress": "deflate"}
    if tiled:
        options.update(tiled=True, blockxsize=64, blockysize=64)
    options.update(profile)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=cols,
        height=rows,
        count=bands,
        dtype=data.dtype,
        nodata=nodata,
        crs=crs,
        transform=from_origin(440_000, 3_750_000, 30, 30),
        **options,
    ) as dst:
        dst.write(data)
    return path


def random_image(shape: tuple[int, int, int], seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    """Smooth-ish random pixels (so a model's output varies across the image), never 0."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(1, 255, (shape[0], shape[1] // 8 + 2, shape[2] // 8 + 2))
    image = np.kron(coarse, np.ones((1, 8, 8)))[:, : shape[1], : shape[2]]
    image = image + rng.normal(0, 10, shape)
    return np.clip(image, 1, 255).astype(dtype)


@pytest.fixture
def image_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a random GeoTIFF of a given shape and return its path."""

    def make(shape: tuple[int, int, int] = (3, 200, 230), name: str = "in.tif", seed: int = 0, **kw: object) -> Path:
        return write_geotiff(tmp_path / name, random_image(shape, seed), **kw)  # type: ignore[arg-type]

    return make
