"""Prediction with a valid-convolution model: abutting output tiles with mirrored context give exactly one
forward pass over the whole raster reflect-padded by c, whatever the chunking, batching or resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr

from pipeline import load_checkpoint, predict
from pipeline.layout import tile_layout
from pipeline.model import UNetConfig, logits_to_probs
from tiling import Span
from tiling.geometry import ValidGeometry
from tiling.readers import open_raster
from tiling.tile_input import MirroredInput, reflect_indices

from .conftest import make_checkpoint, random_image, write_geotiff

DEPTH, TILE = 3, 24  # k = 8, c = 44; a 24 px output tile reads 24 + 88 + 4 = 116 px (a legal size)
SHAPE = (2, 150, 181)  # neither side a multiple of k nor of the tile


def whole_image_pass(image: np.ndarray, checkpoint: Path, valid: np.ndarray | None = None, tta: bool = False):
    """One forward pass over the whole raster reflect-padded by c (and at the bottom/right up to a legal size),
    written independently of tilewise's tiling; nodata pixels zeroed after normalisation, NaN in the result."""
    loaded = load_checkpoint(checkpoint)
    norm, geometry = loaded.card.normalization, ValidGeometry(loaded.card.model.depth)
    _, height, width = image.shape
    c = geometry.context
    pad = ((c, geometry.input_for_output(height) - height - c), (c, geometry.input_for_output(width) - width - c))
    mean = np.array(norm.mean, np.float32)[:, None, None]
    std = np.array(norm.std, np.float32)[:, None, None]
    x = np.pad((image.astype(np.float32) - mean) / std, ((0, 0), *pad), mode="reflect")
    if valid is not None:
        x = x * np.pad(valid, pad, mode="reflect")[None]
    flips = [(), (2,), (3,), (2, 3)] if tta else [()]
    with torch.no_grad():
        batch = torch.from_numpy(x[None])
        probs = sum(torch.flip(logits_to_probs(loaded.model(torch.flip(batch, d))), d) for d in flips) / len(flips)
    out = probs[0].numpy()[:, :height, :width]
    if valid is not None:
        out[:, ~valid] = np.nan
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, Path]:
    folder = tmp_path_factory.mktemp("valid")
    image = random_image(SHAPE, seed=5)
    path = write_geotiff(folder / "scene.tif", image)
    model = make_checkpoint(folder / "valid.safetensors", 2, 3, TILE, DEPTH, seed=2, base_width=2, padding="valid")
    return path, image, model


def _probs(out: Path) -> np.ndarray:
    return zarr.open_group(str(out), mode="r")["probs"][:]


def test_reflect_indices_match_numpy_reflect_padding_however_far() -> None:
    for length in (1, 2, 5, 9):
        row = np.arange(length)
        for start, stop in ((-3, length + 3), (-30, length + 41), (2, 4)):
            padded = np.pad(row, (max(0, -start), max(0, stop - length)), mode="reflect")
            expected = padded[start + max(0, -start) : stop + max(0, -start)]
            np.testing.assert_array_equal(reflect_indices(Span(start, stop), length), expected)


def test_mirrored_window_reads_the_reflect_padded_raster(scene) -> None:
    path, image, _ = scene
    reader = open_raster(path)
    data, valid = MirroredInput(44, 48).read(reader, Span(-44, 100), Span(150, 229), SHAPE[1:])
    reader.close()
    padded = np.pad(image, ((0, 0), (44, 0), (0, 48)), mode="reflect")
    np.testing.assert_array_equal(data, padded[:, :144, 150:229])
    assert valid.all() and valid.shape == data.shape[1:]


def test_output_tiles_abut_on_multiples_of_k_and_the_last_reaches_past_the_edge() -> None:
    layout = tile_layout(UNetConfig(depth=DEPTH, padding="valid"), 150, 181, TILE, overlap=6, blend="gaussian")
    assert layout.grid.row_origins == tuple(range(0, 150, 24)) and layout.grid.col_origins[-1] == 168
    assert all(o % 8 == 0 for o in layout.grid.col_origins)
    assert (layout.grid.overlap, layout.blend, layout.input_size) == (0, "constant", 116)


@pytest.mark.parametrize("chunk", [40, 64])
def test_tiles_equal_one_pass_over_the_whole_mirrored_raster(scene, tmp_path: Path, chunk: int) -> None:
    path, image, model = scene
    reference = whole_image_pass(image, model)
    for batch in (1, 3):
        out = tmp_path / f"c{chunk}b{batch}.zarr"
        report = predict(path, out, model, chunk=chunk, batch_size=batch, output_kind="probs")
        assert report.tiles_run == report.tiles_total == 7 * 8  # each output pixel computed once
        np.testing.assert_allclose(_probs(out), reference, atol=1e-4, rtol=0, err_msg=f"chunk {chunk} batch {batch}")


def test_an_interrupted_run_resumes_to_the_whole_image_pass(scene, tmp_path: Path) -> None:
    path, image, model_path = scene
    model = load_checkpoint(model_path)
    calls = {"n": 0}

    def stop(_module, _inputs, _output):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt

    out, options = tmp_path / "out.zarr", {"chunk": 40, "output_kind": "probs", "workers": 1, "batch_size": 1}
    handle = model.model.register_forward_hook(stop)
    with pytest.raises(KeyboardInterrupt):
        predict(path, out, model, **options)
    handle.remove()
    report = predict(path, out, model, resume=True, **options)
    assert report.resumed and 0 < report.chunks_computed < report.chunks
    np.testing.assert_allclose(_probs(out), whole_image_pass(image, model_path), atol=1e-4, rtol=0)


def test_nodata_and_tta_match_the_whole_image_pass(tmp_path: Path, scene) -> None:
    _, image, model = scene
    image = image.copy()
    image[:, 24:72, 96:181] = 0  # a nodata block of whole tiles reaching the right edge, mirrored past it
    path = write_geotiff(tmp_path / "nodata.tif", image, nodata=0)
    valid = (image != 0).all(axis=0)
    report = predict(path, tmp_path / "out.zarr", model, chunk=64, tta="flips", output_kind="probs")
    assert report.tiles_run < report.tiles_total  # tiles with no valid output pixel are skipped
    reference = whole_image_pass(image, model, valid, tta=True)
    probs = _probs(tmp_path / "out.zarr")
    np.testing.assert_array_equal(np.isnan(probs), np.isnan(reference))
    np.testing.assert_allclose(probs, reference, atol=1e-4, rtol=0)


def test_labels_in_a_cog_are_the_whole_image_pass_argmax(scene, tmp_path: Path) -> None:
    path, image, model = scene
    predict(path, tmp_path / "labels.tif", model, chunk=64)
    with rasterio.open(tmp_path / "labels.tif") as src:
        labels = src.read(1)
    expected = whole_image_pass(image, model).argmax(axis=0)
    assert (labels == expected).mean() > 0.999  # ties aside


def test_a_cluster_gives_the_whole_image_pass(scene, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    path, image, model = scene
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as c:
        predict(path, tmp_path / "out.zarr", model, chunk=40, output_kind="probs", scheduler=c.scheduler_address)
    np.testing.assert_allclose(_probs(tmp_path / "out.zarr"), whole_image_pass(image, model), atol=1e-4, rtol=0)


def test_a_masked_run_equals_the_whole_image_pass_inside_the_mask(scene, tmp_path: Path) -> None:
    """With a valid-area mask, chunks of several tile rows (the first read in two parts) give the whole-image
    pass wherever the mask is set and nodata elsewhere."""
    path, image, model = scene
    area = np.zeros(SHAPE[1:], np.uint8)
    area[10:130, 5:100] = 1
    mask = write_geotiff(tmp_path / "mask.tif", area[np.newaxis])
    out = tmp_path / "masked.zarr"
    predict(path, out, model, chunk=96, output_kind="probs", mask=str(mask), mask_scale=1)
    probs, reference = _probs(out), whole_image_pass(image, model)
    inside = area.astype(bool)
    np.testing.assert_allclose(probs[:, inside], reference[:, inside], atol=1e-4, rtol=0)
    assert np.isnan(probs[:, ~inside]).all()
