"""Slides, masks and products through the CLI: bad input gets one line naming the problem, nothing is written."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.cli import _predict_options, build_parser, main
from sample_data.scene import synthesize

from .conftest import make_checkpoint, random_image, write_geotiff
from .test_cli import assert_nothing_written, assert_one_line_error, run_cli
from .test_slides import write_pyramid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_MODEL = Path(__file__).resolve().parents[1] / "sample_data" / "demo_model.safetensors"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.moveaxis(random_image((3, 150, 170)), 0, 2), photometric="rgb")
    return {
        "slide": write_pyramid(tmp_path / "slide.ome.tif", random_image((3, 256, 192), seed=1), levels=2),
        "plain": plain,
        "scene": write_geotiff(tmp_path / "scene.tif", random_image((3, 150, 170))),
        "model": make_checkpoint(tmp_path / "model.safetensors", tile=64),
        "out": tmp_path / "out.tif",
    }


def _jbig_tiff(path: Path) -> Path:
    """A TIFF whose tiles claim JBIG compression, which no codec here decodes."""
    tifffile.imwrite(path, random_image((1, 128, 128))[0], tile=(64, 64))
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["Compression"]
        offset, byteorder = tag.valueoffset, tif.byteorder
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = struct.pack(byteorder + "H", 34661)
    path.write_bytes(bytes(data))
    return path


def test_undecodable_tiles_name_the_compression_and_the_codec(files, capsys, tmp_path: Path) -> None:
    path = _jbig_tiff(tmp_path / "fax.tif")
    mono = make_checkpoint(tmp_path / "mono.safetensors", in_channels=1, tile=64)
    code, err = run_cli(capsys, "predict", path, files["out"], "--model", mono)
    assert_one_line_error(code, err, 1, "fax.tif", "JBIG (TIFF compression 34661)", "codec")
    assert_nothing_written(files["out"])


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--mpp", "-1"], ["mpp must be a positive number"]),
        (["--level", "5"], ["--level 5 does not exist", "2 level(s)"]),
        (["--level", "-1"], ["level must be a pyramid level"]),
        (["--level", "1", "--mpp", "0.5"], ["either level or mpp"]),
        (["--min-valid", "1.5"], ["min_valid must be a fraction"]),
        (["--vector", "out.shp"], ["vector must be a file name ending in .gpkg or .geojson"]),
        (["--preview", "out.jpg"], ["preview must be a file name ending in .png"]),
        (["--vector", "out.gpkg", "--output-kind", "probs"], ["made from the label or instance map"]),
        (["--tissue-channel", "hue"], ["--tissue-channel", "invalid choice: 'hue'", "saturation"]),
        (["--min-object-area", "-1"], ["min_object_area must be a whole number of pixels ≥ 0"]),
        (["--objects", "t.csv"], ["add instances to --output-kind"]),
    ],
)
def test_bad_slide_options(files, capsys, flags, words) -> None:
    code, err = run_cli(capsys, "predict", files["slide"], files["out"], "--model", files["model"], *flags)
    assert_one_line_error(code, err, 2, *words)
    assert_nothing_written(files["out"])


def test_mpp_needs_a_pixel_size_and_a_slide(files, capsys) -> None:
    code, err = run_cli(capsys, "predict", files["plain"], files["out"], "--model", files["model"], "--mpp", "1")
    assert_one_line_error(code, err, 2, "plain.tif", "does not state", "--level")
    code, err = run_cli(capsys, "predict", files["scene"], files["out"], "--model", files["model"], "--mpp", "1")
    assert_one_line_error(code, err, 2, "scene.tif", "does not state", "--input-mpp")
    assert_nothing_written(files["out"])


def test_bad_mask_rasters(files, capsys, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.ones((40, 170), np.uint8))
    code, err = run_cli(capsys, "predict", files["plain"], files["out"], "--model", files["model"], "--mask", wrong)
    assert_one_line_error(code, err, 1, "wrong.tif", "40 x 170", "150 x 170", "aspect ratios differ")
    missing = tmp_path / "nope.tif"
    code, err = run_cli(capsys, "predict", files["plain"], files["out"], "--model", files["model"], "--mask", missing)
    assert_one_line_error(code, err, 1, "nope.tif", "does not exist")
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros((150, 170), np.uint8))
    code, err = run_cli(capsys, "predict", files["plain"], files["out"], "--model", files["model"], "--mask", empty)
    assert_one_line_error(code, err, 1, "no valid pixels inside the empty.tif mask")
    assert_nothing_written(files["out"])


def test_slide_run_reports_mask_and_products(files, capsys, tmp_path: Path) -> None:
    mask = tmp_path / "left.tif"
    left = np.zeros((150, 170), np.uint8)
    left[:, :80] = 1
    tifffile.imwrite(mask, left)
    preview = tmp_path / "p.png"
    code, err = run_cli(
        capsys, "predict", files["plain"], files["out"], "--model", files["model"], "--mask", mask,
        "--min-valid", "0.5", "--chunk", "64", "--preview", preview,
    )  # fmt: skip
    assert code == 0, err
    assert preview.exists() and files["out"].exists()
    assert "inside the mask" in err and "skipped" in err and "not read" in err and str(preview) in err
    labels = tifffile.imread(files["out"])
    assert (labels[:, 80:] == 255).all() and (labels[:, :64] != 255).all()


def test_info_lists_levels(files, capsys) -> None:
    assert main(["info", str(files["slide"]), "--mpp", "0.75", "--mask", "tissue", "--tissue-threshold", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "levels      0: 192 x 256 px, downsample 1, 0.25 µm/px" in out  # width x height
    assert "1: 96 x 128 px, downsample 2, 0.5 µm/px" in out
    assert "reading     level 1, area-resampled by 1.5" in out
    assert "mask        tissue (saturation > 0.1)" in out


def test_level_flag_overrides_the_slide_config_mpp() -> None:
    argv = ["predict", "in.svs", "out.tif", "--config", str(CONFIGS / "slide.yaml")]
    opts, _ = _predict_options(build_parser().parse_args(argv))
    assert (opts.mpp, opts.level, opts.mask, opts.min_valid) == (0.5, None, "tissue", 0.05)
    opts, _ = _predict_options(build_parser().parse_args([*argv, "--level", "1"]))
    assert (opts.mpp, opts.level) == (None, 1)


@pytest.mark.parametrize("reading", [["--level", "1"], ["--mpp", "0.5"]])
def test_slide_polygons_are_in_level_0_pixels(tmp_path: Path, reading: list[str]) -> None:
    """Read at half resolution, the polygons still cover the labels' pixels at full (level-0) resolution."""
    rgb, _ = synthesize(0, 0, 256, 320, seed=4)  # buildings, which the demo model finds
    slide = write_pyramid(tmp_path / "slide.ome.tif", rgb, levels=2)  # 0.25 µm/px; level 1 at 0.5
    out, polygons = tmp_path / "labels.ome.tif", tmp_path / "s.geojson"
    argv = ["predict", slide, out, "--model", DEMO_MODEL, *reading, "--vector", polygons]
    assert main([str(a) for a in argv]) == 0
    labels = tifffile.imread(out, level=0).squeeze()
    assert labels.shape == (128, 160)  # read at 0.5 µm/px
    rows, cols = np.nonzero(labels)
    assert len(rows) > 0
    points = np.array(
        [
            xy
            for f in json.loads(polygons.read_text())["features"]
            for ring in f["geometry"]["coordinates"]
            for xy in ring
        ]
    )
    # pixel edges of the read grid, doubled: the polygons' extent in level-0 pixels
    assert points[:, 0].min() == 2 * cols.min() and points[:, 0].max() == 2 * (cols.max() + 1)
    assert points[:, 1].min() == 2 * rows.min() and points[:, 1].max() == 2 * (rows.max() + 1)
