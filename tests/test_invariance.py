"""The result does not depend on chunking or batching, equals a whole-image sliding window, and every tile of
the grid runs through the model exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr

from pipeline import load_checkpoint, predict
from pipeline.model import logits_to_probs
from tiling import OptionError, Span
from tiling.readers import open_raster
from tiling.tile_input import PaddedInput

from .conftest import make_checkpoint, random_image, write_geotiff

TILE, OVERLAP = 64, 20


def reference_sliding_window(image: np.ndarray, checkpoint: Path, tile: int, overlap: int) -> np.ndarray:
    """A whole-image sliding window written independently of tilewise: Gaussian (σ = T/8) weighted average."""
    loaded = load_checkpoint(checkpoint)
    norm = loaded.card.normalization
    x = (image.astype(np.float32) - np.array(norm.mean, np.float32)[:, None, None]) / np.array(norm.std, np.float32)[
        :, None, None
    ]
    _, height, width = x.shape
    stride = tile - overlap

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        out = list(range(0, length - tile, stride))
        return [*out, length - tile]

    centre = np.arange(tile) + 0.5 - tile / 2
    g = np.maximum(np.exp(-0.5 * (centre / (tile / 8)) ** 2) / np.exp(-0.5 * (0.5 / (tile / 8)) ** 2), 1e-3)
    weight = np.outer(g, g)
    classes = loaded.card.model.classes
    num = np.zeros((classes, height, width))
    den = np.zeros((height, width))
    with torch.no_grad():
        for y in starts(height):
            for xx in starts(width):
                window = torch.from_numpy(x[None, :, y : y + tile, xx : xx + tile].copy())
                p = logits_to_probs(loaded.model(window))[0].numpy()
                num[:, y : y + tile, xx : xx + tile] += weight * p
                den[y : y + tile, xx : xx + tile] += weight
    return (num / den).astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, Path]:
    folder = tmp_path_factory.mktemp("invariance")
    image = random_image((3, 230, 300), seed=3)
    path = write_geotiff(folder / "scene.tif", image)
    checkpoint = make_checkpoint(folder / "model.safetensors", tile=TILE, depth=2, classes=1, seed=1)
    return path, image, checkpoint


def _probs(scene_path: Path, checkpoint: Path, out: Path, **options: object) -> np.ndarray:
    predict(scene_path, out, checkpoint, tile=TILE, overlap=OVERLAP, output_kind="probs", **options)
    return zarr.open_group(str(out), mode="r")["probs"][:]


def test_output_is_the_same_for_every_chunk_and_batch_size(scene, tmp_path: Path) -> None:
    path, _image, checkpoint = scene
    baseline = _probs(path, checkpoint, tmp_path / "whole.zarr", chunk=1000, batch_size=1)
    assert not np.isnan(baseline).any()
    for chunk in (40, 64, 100, 256, 384):
        for batch in (1, 7):
            probs = _probs(path, checkpoint, tmp_path / f"c{chunk}b{batch}.zarr", chunk=chunk, batch_size=batch)
            np.testing.assert_allclose(probs, baseline, atol=1e-5, rtol=0, err_msg=f"chunk {chunk} batch {batch}")


def test_output_equals_a_whole_image_sliding_window(scene, tmp_path: Path) -> None:
    path, image, checkpoint = scene
    probs = _probs(path, checkpoint, tmp_path / "out.zarr", chunk=128, batch_size=3)
    expected = reference_sliding_window(image, checkpoint, TILE, OVERLAP)
    np.testing.assert_allclose(probs, expected, atol=1e-4, rtol=0)


def _one_tile_pass(image: np.ndarray, checkpoint: Path, mode: str) -> np.ndarray:
    """The model over ``image`` normalised and padded at the bottom/right up to one tile (numpy ``mode``)."""
    loaded = load_checkpoint(checkpoint)
    norm = loaded.card.normalization
    x = (image.astype(np.float32) - np.array(norm.mean, np.float32)[:, None, None]) / np.array(norm.std, np.float32)[
        :, None, None
    ]
    _, height, width = x.shape
    x = np.pad(x, ((0, 0), (0, TILE - height), (0, TILE - width)), mode=mode)  # type: ignore[call-overload]
    with torch.no_grad():
        return logits_to_probs(loaded.model(torch.from_numpy(x[None])))[0, :, :height, :width].numpy()


def test_a_raster_smaller_than_a_tile_is_zero_padded_into_its_tile(tmp_path: Path) -> None:
    """Zeros after normalisation, as the model's own convs pad; not a mirror (see ``tiling.tile_input``)."""
    image = random_image((3, 40, 50), seed=5)
    path = write_geotiff(tmp_path / "small.tif", image)
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", tile=TILE, depth=2)
    probs = _probs(path, checkpoint, tmp_path / "out.zarr")
    assert probs.shape == (1, 40, 50)
    np.testing.assert_allclose(probs, _one_tile_pass(image, checkpoint, "constant"), atol=1e-5, rtol=0)
    assert np.abs(probs - _one_tile_pass(image, checkpoint, "reflect")).max() > 1e-3  # a mirror would differ
    for chunk in (16, 24):
        chunked = _probs(path, checkpoint, tmp_path / f"c{chunk}.zarr", chunk=chunk, batch_size=2)
        np.testing.assert_allclose(chunked, probs, atol=1e-5, rtol=0, err_msg=f"chunk {chunk}")


def test_a_border_tile_past_the_raster_is_zero_or_filled_by_reflection(tmp_path: Path) -> None:
    image = random_image((2, 40, 50), seed=6)
    reader = open_raster(write_geotiff(tmp_path / "small.tif", image))
    rows, cols = Span(8, 8 + TILE), Span(0, TILE)
    data, valid = PaddedInput(fill="reflect").read(reader, rows, cols, (40, 50))
    np.testing.assert_array_equal(data, np.pad(image, ((0, 0), (0, 32), (0, 14)), mode="reflect")[:, 8:, :])
    assert valid.all()
    zero, zero_valid = PaddedInput().read(reader, rows, cols, (40, 50))
    reader.close()
    np.testing.assert_array_equal(zero[:, :32, :50], image[:, 8:, :])
    assert not zero[:, 32:].any() and not zero[:, :, 50:].any()
    assert zero_valid[:32, :50].all() and not zero_valid[32:].any() and not zero_valid[:, 50:].any()
    with pytest.raises(OptionError, match="unknown fill"):
        PaddedInput(fill="edge")  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk", [48, 100, 1000])
def test_every_tile_runs_exactly_once(scene, tmp_path: Path, chunk: int) -> None:
    path, _, checkpoint_path = scene
    checkpoint = load_checkpoint(checkpoint_path)
    seen: list[int] = []
    checkpoint.model.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]))
    report = predict(path, tmp_path / "out.tif", checkpoint, tile=TILE, overlap=OVERLAP, chunk=chunk, batch_size=4)
    rows = len(range(0, 230 - TILE, TILE - OVERLAP)) + 1
    cols = len(range(0, 300 - TILE, TILE - OVERLAP)) + 1
    assert sum(seen) == report.tiles_run == report.tiles_total == rows * cols
    assert max(seen) <= 4


def test_multiclass_probabilities_sum_to_one(tmp_path: Path) -> None:
    image = random_image((3, 100, 120), seed=2)
    path = write_geotiff(tmp_path / "s.tif", image)
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", classes=4, tile=32, depth=2)
    probs = _probs(path, checkpoint, tmp_path / "out.zarr", chunk=50)
    assert probs.shape == (4, 100, 120)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_flip_tta_and_its_invariance(scene, tmp_path: Path) -> None:
    path, _, checkpoint = scene
    plain = _probs(path, checkpoint, tmp_path / "plain.zarr", chunk=1000)
    tta = _probs(path, checkpoint, tmp_path / "tta.zarr", chunk=1000, tta="flips")
    tta_chunked = _probs(path, checkpoint, tmp_path / "tta2.zarr", chunk=100, tta="flips", batch_size=2)
    assert np.abs(plain - tta).max() > 1e-4  # flips change a random model's output
    np.testing.assert_allclose(tta_chunked, tta, atol=1e-5, rtol=0)


def test_nodata_pixels_are_nodata_and_tiles_without_data_are_skipped(tmp_path: Path) -> None:
    image = random_image((3, 200, 200), seed=4)
    image[:, :, :100] = 0  # left half nodata
    path = write_geotiff(tmp_path / "s.tif", image, nodata=0)
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", tile=TILE, depth=2)
    report = predict(path, tmp_path / "labels.tif", checkpoint, tile=TILE, overlap=OVERLAP, chunk=96)
    with rasterio.open(tmp_path / "labels.tif") as ds:
        labels = ds.read(1)
        assert ds.nodata == 255
    assert (labels[:, :100] == 255).all()
    assert np.isin(labels[:, 100:], [0, 1]).all()
    assert report.tiles_skipped > 0
    assert report.tiles_run + report.tiles_skipped == report.tiles_total


def test_a_chunk_read_in_parts_queues_its_first_row_of_tiles_before_reading_the_rest(
    scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk that starts while the forward pool is idle reads the rows of its first tile row, queues those
    tiles, then reads its whole window; the output is the same as reading each window at once."""
    from pipeline import runner
    from pipeline.cache import ModelCache
    from tiling.readers import GdalReader

    path, _image, checkpoint = scene
    events: list[tuple[str, int]] = []
    original_read, original_queued = GdalReader.read, runner.ModelRunner.queued

    def read_spy(self, rows, cols):
        events.append(("read", rows.size))
        return original_read(self, rows, cols)

    def queued_spy(self, image, valid, origins, *args):
        events.append(("queued", len(origins)))
        return original_queued(self, image, valid, origins, *args)

    monkeypatch.setattr(GdalReader, "read", read_spy)
    monkeypatch.setattr(runner.ModelRunner, "queued", queued_spy)
    outputs = {}
    for idle in (False, True):
        monkeypatch.setattr(ModelCache, "is_idle", lambda self, spec, idle=idle: idle)
        events.clear()
        # One worker: the chunks' reads and queues do not interleave in the record.
        outputs[idle] = _probs(path, checkpoint, tmp_path / f"idle{idle}.zarr", chunk=128, batch_size=1, workers=1)
        if idle:
            # Chunk (0, 0) owns tiles at 0, 44 and 88 along each axis; its window has 88 + 64 rows: first the
            # 64 rows of its first row of tiles, those 3 tiles, then the whole window and the other 6 tiles.
            assert events[:4] == [("read", TILE), ("queued", 3), ("read", 88 + TILE), ("queued", 6)]
        else:
            assert events[:2] == [("read", 88 + TILE), ("queued", 9)]
    np.testing.assert_array_equal(outputs[True], outputs[False])
