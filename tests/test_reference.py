"""tilewise against a whole-image sliding window written here, independently of its code: every blend window,
rasters whose length divides evenly by the stride and ones that do not, fp32 and bf16, and flip TTA as the mean
of the four flipped predictions. The model's probabilities span most of [0, 1], so 1e-5 is a tight bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline import ModelCard, UNetConfig, build_model, load_checkpoint, predict, save_checkpoint
from pipeline.model import logits_to_probs
from tiling import Normalization

from .conftest import random_image, write_geotiff

TILE, OVERLAP = 64, 16  # stride 48


def _window(kind: str) -> np.ndarray:
    centres = np.arange(TILE) + 0.5
    if kind == "gaussian":
        profile = np.exp(-0.5 * ((centres - TILE / 2) / (TILE / 8)) ** 2)
    elif kind == "cosine":
        profile = np.sin(np.pi * centres / TILE) ** 2
    else:
        profile = np.ones(TILE)
    profile = np.maximum(profile / profile.max(), 1e-3)
    return np.outer(profile, profile)


def _starts(length: int) -> list[int]:
    stride = TILE - OVERLAP
    return sorted({*range(0, length - TILE, stride), length - TILE})


def _forward(model: torch.nn.Module, x: torch.Tensor, precision: str, tta: bool) -> np.ndarray:
    flips: list[tuple[int, ...]] = [(), (2,), (3,), (2, 3)] if tta else [()]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        outs = [
            torch.flip(logits_to_probs(model(torch.flip(x, d) if d else x)), d) if d else logits_to_probs(model(x))
            for d in flips
        ]
    return (sum(outs) / len(outs))[0].float().numpy()


def sliding_window(image: np.ndarray, checkpoint: Path, kind: str, precision: str = "fp32", tta: bool = False):
    loaded = load_checkpoint(checkpoint)
    norm = loaded.card.normalization
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (norm.mean, norm.std))
    x = (image.astype(np.float32) - mean) / std
    _, height, width = x.shape
    weight = _window(kind)
    num = np.zeros((loaded.card.model.classes, height, width))
    den = np.zeros((height, width))
    for y in _starts(height):
        for xx in _starts(width):
            tile = torch.from_numpy(x[None, :, y : y + TILE, xx : xx + TILE].copy())
            num[:, y : y + TILE, xx : xx + TILE] += weight * _forward(loaded.model, tile, precision, tta)
            den[y : y + TILE, xx : xx + TILE] += weight
    return (num / den).astype(np.float32)


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random U-Net whose head is scaled up, so its probabilities span most of [0, 1]."""
    torch.manual_seed(4)
    config = UNetConfig(3, 1, base_width=4, depth=2)
    model = build_model(config).eval()
    norm = Normalization((128.0,) * 3, (50.0,) * 3)
    sample = (torch.from_numpy(random_image((3, TILE, TILE), seed=1)).float()[None] - 128.0) / 50.0
    with torch.no_grad():
        logits = model(sample)
        scale = 4.0 / float(logits.std())  # logits of about ±4 around 0: sigmoid from 0.02 to 0.98
        model.head.weight *= scale
        model.head.bias.copy_((model.head.bias - logits.median()) * scale)
    card = ModelCard(config, norm, ("background", "foreground"), TILE)
    return save_checkpoint(tmp_path_factory.mktemp("sharp") / "sharp.safetensors", model, card)


def _run(image: np.ndarray, model: Path, folder: Path, **options: object) -> tuple[np.ndarray, object]:
    scene = write_geotiff(folder / "scene.tif", image)
    out = folder / "out.zarr"
    report = predict(scene, out, model, tile=TILE, overlap=OVERLAP, output_kind="probs", chunk=96, **options)
    return np.asarray(zarr.open_group(str(out), mode="r")["probs"][:]), report


@pytest.mark.parametrize("kind", ["gaussian", "cosine", "constant"])
@pytest.mark.parametrize("height", [208, 230])  # 208 = 64 + 3 · 48: the last tile's origin falls on the stride
def test_equals_a_whole_image_sliding_window(sharp_model: Path, tmp_path: Path, kind: str, height: int) -> None:
    image = random_image((3, height, 160), seed=height)
    probs, report = _run(image, sharp_model, tmp_path, blend=kind, batch_size=2)
    expected = sliding_window(image, sharp_model, kind)
    assert np.percentile(expected, 95) - np.percentile(expected, 5) > 0.8  # outputs span most of [0, 1]
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)
    assert report.tiles_run == report.tiles_total == len(_starts(height)) * len(_starts(160))


def test_bf16_equals_the_sliding_window_in_bf16(sharp_model: Path, tmp_path: Path) -> None:
    image = random_image((3, 208, 160), seed=7)
    probs, _ = _run(image, sharp_model, tmp_path, precision="bf16", batch_size=1)
    np.testing.assert_allclose(probs, sliding_window(image, sharp_model, "gaussian", "bf16"), atol=1e-5, rtol=0)


def test_flip_tta_is_the_mean_of_the_four_flipped_predictions(sharp_model: Path, tmp_path: Path) -> None:
    image = random_image((3, 208, 160), seed=8)
    probs, _ = _run(image, sharp_model, tmp_path, tta="flips", batch_size=2)
    np.testing.assert_allclose(probs, sliding_window(image, sharp_model, "gaussian", tta=True), atol=1e-5, rtol=0)
