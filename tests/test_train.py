"""Training: a few steps on a small crop, the checkpoint in predict, masks, the ignore value, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from pipeline import TrainOptions, load_checkpoint, predict, train
from pipeline.cli import main
from pipeline.training import data as training_data
from pipeline.training.augment import Augmentation
from pipeline.training.data import TileSampler, open_pairs, read_tile, survey
from pipeline.training.losses import LOSSES, make_loss
from pipeline.training.masks import IGNORE, MaskEncoding
from pipeline.training.metrics import Confusion
from pipeline.training.paths import expand_paths
from pipeline.training.run import class_weights
from sample_data.scene import synthesize
from tiling.errors import InputError

from .conftest import shared_file, write_geotiff

#: Tiny and fast: base width 4, two poolings, 64-px tiles.
TINY = {
    "base_width": 4,
    "depth": 2,
    "tile": 64,
    "batch_size": 4,
    "class_names": ("background", "building"),
    "threads": 2,
    "plot": False,
}
PALETTE = {"land": "#8429F6", "road": "#6EC1E4", "building": "#3C1098"}


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """A 160 × 160 crop of the synthetic scene and its 0/1 truth."""
    rgb, truth = synthesize(0, 0, 160, 160, seed=3)
    image = write_geotiff(tmp_path / "scene.tif", np.maximum(rgb, 1))
    mask = write_geotiff(tmp_path / "truth.tif", truth[np.newaxis])
    return image, mask


def run_cli(capsys, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tilewise: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


# -- a real run ------------------------------------------------------------------------------------------------


def test_loss_falls_and_checkpoint_predicts_like_the_in_memory_model(scene, tmp_path: Path) -> None:
    image, mask = scene
    report = train(
        images=[str(image)], masks=[str(mask)], out=str(tmp_path / "m.safetensors"), epochs=4, steps_per_epoch=6,
        lr=0.01, **TINY,
    )  # fmt: skip
    losses = [row["train_loss"] for row in report.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert report.metrics.exists() and len(report.metrics.read_text().splitlines()) == 1 + 4
    assert report.model is not None and report.scores is not None

    saved = load_checkpoint(report.checkpoint)
    assert saved.card.class_names == ("background", "building")
    assert saved.card.info["trained"] is True and saved.card.info["epoch"] == report.best_epoch
    np.testing.assert_allclose(saved.card.normalization.mean, report.normalization.mean)
    for name, tensor in report.model.model.state_dict().items():
        torch.testing.assert_close(saved.model.state_dict()[name], tensor, rtol=0, atol=0)

    from_file, in_memory = tmp_path / "file.tif", tmp_path / "memory.tif"
    # One batch size for both: while the sizer explores, which tiles run in batches of 1 or 2 depends on thread
    # timing, and oneDNN's sums differ in the last bit between batch sizes.
    settings = ["--output-kind", "probs", "--chunk", "96", "--batch-size", "1"]
    argv = ["predict", image, from_file, "--model", report.checkpoint, *settings]
    assert main([str(a) for a in argv]) == 0  # the checkpoint file through `tilewise predict`
    predict(image, in_memory, report.model, output_kind="probs", chunk=96, batch_size=1)  # in memory
    with rasterio.open(from_file) as a, rasterio.open(in_memory) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_resume_continues_exactly_where_the_run_stopped(scene, tmp_path: Path) -> None:
    image, mask = scene
    common = {"images": [str(image)], "masks": [str(mask)], "steps_per_epoch": 3, "schedule": "onecycle", **TINY}
    straight = train(out=str(tmp_path / "straight.safetensors"), epochs=2, **common)
    stopped = tmp_path / "stopped.safetensors"
    with pytest.raises(_Stop):  # interrupted after epoch 1, whose resume file is already written
        train(out=str(stopped), epochs=2, **common, on_epoch=_stop_after_first_epoch)
    resumed = train(out=str(stopped), epochs=2, resume=True, **common)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[-1]["train_loss"] == pytest.approx(straight.history[-1]["train_loss"], rel=1e-6)
    a = torch.load(straight.state, weights_only=True)["model"]
    b = torch.load(resumed.state, weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name])


class _Stop(Exception):
    pass


def _stop_after_first_epoch(row: dict) -> None:
    raise _Stop


def test_resume_with_other_settings_is_refused(scene, tmp_path: Path, capsys) -> None:
    image, mask = scene
    out = tmp_path / "m.safetensors"
    flags = ["--images", image, "--masks", mask, "--out", out, "--epochs", "1", "--steps-per-epoch", "1"]
    tiny = ["--base-width", "4", "--depth", "2", "--tile", "64", "--class-names", "background", "building"]
    assert run_cli(capsys, "train", *flags, *tiny, "--no-plot", "--loader-workers", "1")[0] == 0
    code, err = run_cli(capsys, "train", *flags, *tiny, "--resume", "--lr", "0.5")  # and no loader workers
    assert_one_line_error(code, err, "cannot resume", "lr")
    assert "loader" not in err  # the number of workers cannot change the run
    code, err = run_cli(capsys, "train", *flags, *tiny)
    assert_one_line_error(code, err, "already exists", "--overwrite")


def test_reads_are_windowed_never_whole_rasters(scene, monkeypatch) -> None:
    image, mask = scene
    monkeypatch.setattr(training_data, "SURVEY_BLOCK", 64)
    encoding = MaskEncoding.from_options("ids", ("background", "building"), None, None)
    pairs = open_pairs([str(image)], [str(mask)], None, encoding, "training")
    sizes: list[tuple[int, int]] = []
    for reader in (pairs[0].image, pairs[0].mask):
        original = reader.read

        def recording(rows, cols, _original=original):
            sizes.append((rows.size, cols.size))
            return _original(rows, cols)

        reader.read = recording  # type: ignore[method-assign]
    found = survey(pairs, 32, ("background", "building"))
    read_tile(pairs[0], 50, 70, 64, found.normalization)
    assert sizes and max(max(s) for s in sizes) <= 64
    assert found.class_counts.sum() == 160 * 160 and found.class_counts[1] > 0


def test_oversampling_centres_tiles_on_rare_classes(tmp_path: Path) -> None:
    image = write_geotiff(tmp_path / "img.tif", np.full((1, 256, 256), 100, np.uint8))
    labels = np.zeros((1, 256, 256), np.uint8)
    labels[0, 200:210, 30:40] = 1  # 0.15 % of the pixels
    mask = write_geotiff(tmp_path / "mask.tif", labels)
    encoding = MaskEncoding.from_options("ids", ("background", "rare"), None, None)
    pairs = open_pairs([str(image)], [str(mask)], None, encoding, "training")
    found = survey(pairs, 16, ("background", "rare"))

    def share_with_rare(oversample: float) -> float:
        sampler = TileSampler(pairs, found, 32, oversample)
        rng = np.random.default_rng(0)
        hits = 0
        for _ in range(200):
            _, row, col = sampler.sample(rng)
            hits += bool(labels[0, row : row + 32, col : col + 32].any())
        return hits / 200

    assert share_with_rare(0.0) < 0.1
    assert share_with_rare(1.0) > 0.4  # half the draws pick the rare class, and their tiles hold it


# -- masks, losses, augmentation -------------------------------------------------------------------------------


def test_palette_masks_map_correctly(tmp_path: Path) -> None:
    names = ("land", "road", "building")
    encoding = MaskEncoding.from_options("palette", names, PALETTE, "#9B9B9B")
    colours = {"land": (0x84, 0x29, 0xF6), "road": (0x6E, 0xC1, 0xE4), "building": (0x3C, 0x10, 0x98)}
    ids = np.array([[0, 1, 2, 3], [2, 2, 1, 0]])
    lut = np.array([colours["land"], colours["road"], colours["building"], (0x9B, 0x9B, 0x9B)], dtype=np.uint8)
    rgb = np.moveaxis(lut[ids], -1, 0)
    expected = np.where(ids == 3, IGNORE, ids)
    np.testing.assert_array_equal(encoding.decode(rgb, "test"), expected)

    # The same mask as an RGB GeoTIFF and as a one-band paletted GeoTIFF decodes the same through the readers.
    image = write_geotiff(tmp_path / "img.tif", np.full((3, 2, 4), 100, np.uint8), tiled=False)
    rgb_mask = write_geotiff(tmp_path / "rgb.tif", rgb, tiled=False)
    paletted = write_geotiff(tmp_path / "pal.tif", ids.astype(np.uint8)[np.newaxis], tiled=False, photometric="palette")
    with rasterio.open(paletted, "r+") as ds:
        ds.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(lut)})
    for path in (rgb_mask, paletted):
        pair = open_pairs([str(image)], [str(path)], None, encoding, "training")[0]
        np.testing.assert_array_equal(read_tile(pair, 0, 0, 4, survey([pair], 4, names).normalization)[1][:2], expected)
        pair.close()


def test_binary_and_id_masks() -> None:
    binary = MaskEncoding.from_options("binary", ("membrane", "cell"), None, None)
    np.testing.assert_array_equal(binary.decode(np.array([[[0, 3, 127, 128, 250, 255]]]), "m"), [[0, 0, 0, 1, 1, 1]])
    ids = MaskEncoding.from_options("ids", ("a", "b", "c"), None, 255)
    np.testing.assert_array_equal(ids.decode(np.array([[[0, 2, 255, 1]]]), "m"), [[0, 2, IGNORE, 1]])
    with pytest.raises(Exception, match="value 7 at row 0, col 1"):
        ids.decode(np.array([[[0, 7]]]), "m")
    # Pixels the mask raster marks invalid (its nodata) are unlabelled, whatever value they hold.
    no_ignore = MaskEncoding.from_options("ids", ("a", "b"), None, None)
    valid = np.array([[True, False, True]])
    np.testing.assert_array_equal(no_ignore.decode(np.array([[[1, 99, 0]]]), "m", valid), [[1, IGNORE, 0]])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", list(LOSSES))
def test_ignored_pixels_contribute_no_loss(name: str, weighted: bool) -> None:
    binary = name.startswith(("bce", "dice"))
    classes = 1 if binary else 4
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2 if binary else classes, (2, 16, 16), generator=generator)
    ignored = torch.rand(2, 16, 16, generator=generator) < 0.3
    labels[ignored] = IGNORE
    logits = torch.randn(2, classes, 16, 16, generator=generator, requires_grad=True)
    loss = make_loss(name, binary, [1.0 + i for i in range(2 if binary else classes)] if weighted else None)
    value = loss(logits, labels)
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert logits.grad is not None and (logits.grad.abs().sum(dim=1)[ignored] == 0).all()
    assert (logits.grad.abs().sum(dim=1)[~ignored] > 0).any()
    # Whatever the model says at ignored pixels, the loss stays the same.
    changed = torch.where(ignored[:, None], torch.randn_like(logits) * 50, logits.detach())
    torch.testing.assert_close(loss(changed, labels), value.detach())
    # A batch with nothing labelled gives zero loss, and a zero gradient (not NaN).
    empty = torch.full_like(labels, IGNORE)
    fresh = logits.detach().clone().requires_grad_(True)
    nothing = loss(fresh, empty)
    nothing.backward()
    assert float(nothing.detach()) == pytest.approx(0.0, abs=1e-6)
    assert fresh.grad is not None and torch.isfinite(fresh.grad).all()


def test_class_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (2, 8, 8), generator=generator)
    logits = torch.randn(2, 1, 8, 8, generator=generator)
    plain = make_loss("bce", True)(logits, labels)
    torch.testing.assert_close(make_loss("bce", True, [2.0, 2.0])(logits, labels), plain)  # a weighted mean
    per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="none")
    w = torch.where(labels == 1, 3.0, 1.0)
    torch.testing.assert_close(make_loss("bce", True, [1.0, 3.0])(logits, labels), (per_pixel * w).sum() / w.sum())
    assert class_weights("balanced", np.array([75, 25, 0])) == pytest.approx([2 / 3, 2.0, 1.0])
    with pytest.raises(Exception, match="class_weights"):
        TrainOptions(class_weights=(1.0,))


def test_metrics_skip_ignored_pixels() -> None:
    confusion = Confusion(2)
    truth = np.array([[0, 1, 1, IGNORE]])
    confusion.add(np.array([[0, 1, 0, 1]]), truth)
    scores = confusion.scores(("bg", "fg"))
    assert confusion.matrix.sum() == 3
    assert scores.pixel_error == pytest.approx(1 / 3)
    assert scores.dice[1] == pytest.approx(2 / 3) and scores.iou[1] == pytest.approx(1 / 2)
    assert scores.error[1] == pytest.approx(1 / 2) and scores.error[0] == 0


def test_augmentation_moves_image_and_labels_together() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (6, 32, 32), generator=generator)
    images = labels[:, None].float().repeat(1, 2, 1, 1)
    geometric = Augmentation(flips=True, rotations=True)
    out_images, out_labels, out_weights = geometric(images, labels, torch.Generator().manual_seed(5), labels.float())
    assert not torch.equal(out_labels, labels)  # something moved
    torch.testing.assert_close(out_images[:, 0], out_labels.float())
    torch.testing.assert_close(out_weights, out_labels.float())  # weights move with the labels
    # Weights or not, a seed draws the same augmentation.
    assert torch.equal(geometric(images, labels, torch.Generator().manual_seed(5))[1], out_labels)
    elastic = Augmentation(flips=False, rotations=False, elastic=True, elastic_sigma=10, elastic_grid=3)
    a = elastic(images, labels, torch.Generator().manual_seed(7))
    b = elastic(images, labels, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[1], b[1])  # seeded: the same deformation
    assert set(a[1].unique().tolist()) <= {0, 1, 2} and not torch.equal(a[1], labels)
    assert (a[1] == labels).float().mean() > 0.3  # deformed, not scrambled


def test_paths_expand_ranges_and_globs(tmp_path: Path) -> None:
    for i in (1, 2, 10):
        (tmp_path / f"{i}.png").touch()
    assert expand_paths(["{1..2}.png"], tmp_path) == [str(tmp_path / "1.png"), str(tmp_path / "2.png")]
    assert [Path(p).name for p in expand_paths([str(tmp_path / "*.png")])] == ["1.png", "2.png", "10.png"]
    with pytest.raises(Exception, match="no files match"):
        expand_paths([str(tmp_path / "*.jpg")])


# -- bad input through the CLI ---------------------------------------------------------------------------------


TINY_FLAGS = ["--base-width", "4", "--depth", "2", "--tile", "64", "--epochs", "1", "--steps-per-epoch", "1"]


def test_image_mask_size_mismatch(scene, tmp_path: Path, capsys) -> None:
    image, _ = scene
    small = write_geotiff(tmp_path / "small.tif", np.zeros((1, 100, 160), np.uint8))
    out = tmp_path / "m.safetensors"
    code, err = run_cli(capsys, "train", "--images", image, "--masks", small, "--out", out, *TINY_FLAGS)
    assert_one_line_error(code, err, "160 x 160", "small.tif", "100 x 160")
    assert not out.exists()


def test_mask_with_unknown_colours(scene, tmp_path: Path, capsys) -> None:
    image, _ = scene
    rgb = np.zeros((3, 160, 160), np.uint8)
    rgb[:, :, :80] = np.array([0x84, 0x29, 0xF6])[:, None, None]
    rgb[:, :, 80:] = np.array([0x12, 0x34, 0x56])[:, None, None]
    mask = write_geotiff(tmp_path / "colours.tif", rgb)
    config = tmp_path / "palette.yaml"
    palette = {"land": "#8429F6", "road": "#6EC1E4"}
    config.write_text(yaml.safe_dump({"train": {"class_names": ["land", "road", "x"], "mask_encoding": "palette",
                                                 "palette": {**palette, "x": "#000001"}}}))  # fmt: skip
    out = tmp_path / "m.safetensors"
    argv = ["train", "--config", config, "--images", image, "--masks", mask, "--out", out, *TINY_FLAGS]
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "colours.tif", "#123456", "not in the palette")
    assert not out.exists()


@pytest.mark.parametrize("case", ["no images", "glob matches nothing", "nothing labelled"])
def test_empty_dataset(case: str, scene, tmp_path: Path, capsys) -> None:
    image, mask = scene
    out = tmp_path / "m.safetensors"
    if case == "no images":
        argv, words = ["--out", out], ("no training images",)
    elif case == "glob matches nothing":
        argv, words = ["--images", tmp_path / "none*.tif", "--masks", mask, "--out", out], ("no files match",)
    else:
        blank = write_geotiff(tmp_path / "blank.tif", np.full((1, 160, 160), 255, np.uint8))
        argv = ["--images", image, "--masks", blank, "--ignore-value", "255", "--out", out]
        words = ("no labelled pixels",)
    code, err = run_cli(capsys, "train", *argv, *TINY_FLAGS)
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_config_unknown_key_and_flags_override(scene, tmp_path: Path, capsys) -> None:
    image, mask = scene
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 3, "learning_rate": 0.1}}))
    code, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "m.safetensors")
    assert code == 2
    assert_one_line_error(code, err, "learning_rate")

    (tmp_path / "data").mkdir()
    image.rename(tmp_path / "data" / image.name)
    mask.rename(tmp_path / "data" / mask.name)
    config.write_text(yaml.safe_dump({"train": {"images": ["data/scene.tif"], "masks": ["data/truth.tif"],
                                                 "epochs": 5, "class_names": ["background", "building"]}}))  # fmt: skip
    out = tmp_path / "m.safetensors"
    code, err = run_cli(capsys, "train", "--config", config, "--out", out, *TINY_FLAGS, "--no-plot")
    assert code == 0, err  # data paths are relative to the config file; --epochs 1 overrides its 5
    assert "epoch 1:" in err and "epoch 2:" not in err and out.exists()


def test_bad_options_exit_2(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "train", "--out", tmp_path / "m.safetensors", "--loss", "ce")
    assert code == 2 and "loss" in err
    assert TrainOptions(class_names=("a", "b", "c")).loss_name == "ce+dice"


# -- real data -------------------------------------------------------------------------------------------------


def test_aerial_dubai_colour_masks_decode_with_the_right_palette() -> None:
    """Tile 1 has RGB masks, Tile 2 paletted ones; the classes.json colours (wrong) are refused by name."""
    root = shared_file("aerial_dubai")
    names = ("building", "land", "road", "vegetation", "water", "unlabeled")
    right = dict(zip(names, ("#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929", "#9B9B9B"), strict=True))
    images = [str(root / f"Tile_{t}/images/image_part_001.jpg") for t in (1, 2)]
    masks = [str(root / f"Tile_{t}/masks/image_part_001.png") for t in (1, 2)]
    encoding = MaskEncoding.from_options("palette", names, right, None)
    pairs = open_pairs(images, masks, None, encoding, "training")
    counts = survey(pairs, 128, names).class_counts
    assert counts.sum() == sum(p.height * p.width for p in pairs)
    assert counts[names.index("land")] > 0 and counts[names.index("road")] > 0
    wrong = dict(zip(names, ("#D0021B", "#F5A623", "#DE597F", "#417505", "#50E3C2", "#9B9B9B"), strict=True))
    encoding = MaskEncoding.from_options("palette", names, wrong, None)
    with pytest.raises(InputError, match="not in the palette"):
        survey(open_pairs(images, masks, None, encoding, "training"), 128, names)
