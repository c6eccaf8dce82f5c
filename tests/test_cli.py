"""Every bad input through the CLI: one line on stderr naming the problem, a non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from safetensors.torch import save_file

from pipeline.cli import main

from .conftest import make_checkpoint, random_image, write_geotiff


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "scene": write_geotiff(tmp_path / "scene.tif", random_image((3, 160, 180))),
        "model": make_checkpoint(tmp_path / "model.safetensors", tile=64),
        "out": tmp_path / "out.tif",
    }


def run_cli(capsys, *argv: object) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own usage errors (a value outside a flag's choices)
        code = int(exit.code or 0)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, expected_code: int, *words: str) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tilewise: error: ")
    for word in words:
        assert word in lines[0], lines[0]


def assert_nothing_written(out: Path) -> None:
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(out.name) or p.name.startswith(out.stem)]
    assert not leftovers, leftovers


def test_success_writes_and_reports(files, capsys) -> None:
    code, err = run_cli(capsys, "predict", files["scene"], files["out"], "--model", files["model"])
    assert code == 0, err
    assert files["out"].exists() and "tiles run" in err


def test_missing_input(files, capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "predict", tmp_path / "nope.tif", files["out"], "--model", files["model"])
    assert_one_line_error(code, err, 1, "nope.tif", "does not exist")
    assert_nothing_written(files["out"])


def test_not_a_raster(files, capsys, tmp_path: Path) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("these are not pixels\n" * 20)
    code, err = run_cli(capsys, "predict", text, files["out"], "--model", files["model"])
    assert_one_line_error(code, err, 1, "notes.tif")
    assert_nothing_written(files["out"])


def _big_tiled_geotiff(tmp_path: Path) -> Path:
    return write_geotiff(tmp_path / "big.tif", random_image((3, 512, 512), seed=9), compress="deflate")


def test_truncated_tiff_fails_mid_run_and_keeps_only_finished_chunks(files, capsys, tmp_path: Path) -> None:
    path = _big_tiled_geotiff(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the header is intact, the last tiles are gone
    code, err = run_cli(
        capsys, "predict", path, files["out"], "--model", files["model"], "--chunk", "128", "--workers", "1"
    )
    assert_one_line_error(code, err, 1, "big.tif", "--resume")
    assert not files["out"].exists()
    # Chunks are run in row-major order: the first rows were read and are kept for a resume.
    done = zarr.open_group(str(files["out"]) + ".partial", mode="r")["done"][:]
    assert 0 < done.sum() < done.size


def test_corrupt_first_tile_fails_before_any_chunk_and_leaves_nothing(files, capsys, tmp_path: Path) -> None:
    path = _big_tiled_geotiff(tmp_path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(count)  # a tile of zeros is not a deflate stream
    path.write_bytes(bytes(data))
    argv = ["predict", path, files["out"], "--model", files["model"], "--chunk", "128", "--workers", "1"]
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, 1, "failed to read", "big.tif")
    assert "--resume" not in err
    assert_nothing_written(files["out"])


def test_band_count_differs_from_the_model(files, capsys, tmp_path: Path) -> None:
    two = write_geotiff(tmp_path / "two.tif", random_image((2, 80, 80)))
    code, err = run_cli(capsys, "predict", two, files["out"], "--model", files["model"])
    assert_one_line_error(code, err, 1, "3 band(s)", "2 are selected")
    assert_nothing_written(files["out"])


def test_overlap_not_smaller_than_the_tile(files, capsys) -> None:
    code, err = run_cli(
        capsys,
        "predict",
        files["scene"],
        files["out"],
        "--model",
        files["model"],
        "--tile",
        "64",
        "--overlap",
        "64",
    )
    assert_one_line_error(code, err, 2, "overlap", "smaller than the tile")
    assert_nothing_written(files["out"])


def test_tile_the_depth_cannot_halve(files, capsys) -> None:
    code, err = run_cli(capsys, "predict", files["scene"], files["out"], "--model", files["model"], "--tile", "66")
    assert_one_line_error(code, err, 2, "tile 66", "nearest valid sizes: 64 or 68")
    assert_nothing_written(files["out"])


def test_zero_dimension_raster(files, capsys, tmp_path: Path) -> None:
    empty = tmp_path / "empty.zarr"
    zarr.create_array(str(empty), shape=(3, 0, 40), dtype="uint8", chunks=(3, 16, 16))
    code, err = run_cli(capsys, "predict", empty, files["out"], "--model", files["model"])
    assert_one_line_error(code, err, 1, "zero dimension")
    assert_nothing_written(files["out"])


@pytest.mark.parametrize("kind", ["nan", "nodata"])
def test_input_without_valid_pixels(files, capsys, tmp_path: Path, kind: str) -> None:
    if kind == "nan":
        path = write_geotiff(tmp_path / "nan.tif", np.full((3, 90, 90), np.nan, np.float32))
    else:
        path = write_geotiff(tmp_path / "nodata.tif", np.zeros((3, 90, 90), np.uint8), nodata=0)
    code, err = run_cli(capsys, "predict", path, files["out"], "--model", files["model"])
    assert_one_line_error(code, err, 1, "no valid pixels")
    assert_nothing_written(files["out"])


def test_unwritable_output_folder(files, capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "predict", files["scene"], files["scene"] / "out.tif", "--model", files["model"])
    assert_one_line_error(code, err, 1, "not a directory")
    code, err = run_cli(capsys, "predict", files["scene"], tmp_path / "missing" / "out.tif", "--model", files["model"])
    assert_one_line_error(code, err, 1, "does not exist")
    code, err = run_cli(capsys, "predict", files["scene"], "/proc/tilewise-out.tif", "--model", files["model"])
    assert_one_line_error(code, err, 1, "not writable")


def test_output_exists(files, capsys) -> None:
    files["out"].write_bytes(b"precious")
    code, err = run_cli(capsys, "predict", files["scene"], files["out"], "--model", files["model"])
    assert_one_line_error(code, err, 1, "already exists", "--overwrite")
    assert files["out"].read_bytes() == b"precious"


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign", "pickle"])
def test_bad_checkpoint(files, capsys, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.safetensors"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "foreign":
        save_file({"weight": torch.zeros(3)}, str(path))
    elif kind == "pickle":
        torch.save({"weight": torch.zeros(3)}, path)
    code, err = run_cli(capsys, "predict", files["scene"], files["out"], "--model", path)
    words = {
        "missing": "does not exist",
        "corrupt": "not a readable safetensors",
        "foreign": "not a tilewise checkpoint",
        "pickle": "never unpickles",
    }[kind]
    assert_one_line_error(code, err, 1, path.name, words)
    assert_nothing_written(files["out"])


def test_unknown_device(files, capsys) -> None:
    code, err = run_cli(capsys, "predict", files["scene"], files["out"], "--model", files["model"], "--device", "tpu")
    assert_one_line_error(code, err, 2, "unknown device 'tpu'")
    assert_nothing_written(files["out"])


def test_usage_errors_exit_2(files, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(files["scene"])])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    code, err = run_cli(capsys, "predict", files["scene"], files["out"])
    assert_one_line_error(code, err, 2, "--model")
    code, err = run_cli(
        capsys, "predict", files["scene"], files["out"], "--model", files["model"], "--memory-limit", "lots"
    )
    assert_one_line_error(code, err, 2, "memory size")


def test_unknown_config_key(files, capsys, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("predict:\n  tile: 64\n  tiel: 32\n")
    code, err = run_cli(capsys, "predict", files["scene"], files["out"], "--model", files["model"], "--config", config)
    assert_one_line_error(code, err, 2, "unknown key 'tiel'", "run.yaml")


def test_debug_shows_the_traceback(files, capsys, tmp_path: Path) -> None:
    from tiling import InputError

    with pytest.raises(InputError):
        main(
            [
                "predict",
                str(tmp_path / "nope.tif"),
                str(files["out"]),
                "--model",
                str(files["model"]),
                "--debug",
            ]
        )


def test_console_script_and_info(files) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "info", str(files["scene"]), "--model", str(files["model"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "180 x 160 pixels (width x height)" in done.stdout and "EPSG:32618" in done.stdout
    assert "bands used  1: unnamed, 2: unnamed, 3: unnamed" in done.stdout
    assert "origin (440000.0, 3750000.0)" in done.stdout  # full precision, as GDAL and QGIS give it
    assert "tiles       64 px" in done.stdout and "memory" in done.stdout


def test_help_is_grouped_with_choices_defaults_and_examples(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("tilewise ")
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "predict" in top and "train" in top and "info" in top
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for heading in ("input and reading:", "tiles and memory:", "model and inference:", "outputs:", "running:"):
        assert heading in text
    assert "{gaussian,cosine,constant,rim}" in text and "(gaussian)" in text and "examples:" in text
    assert "required" in text and "channels-last" in text and "channels-last memory layout" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "palette, upsampling" in capsys.readouterr().out


def test_config_only_train_keys_are_every_setting_without_a_flag() -> None:
    from pipeline.arguments import CONFIG_ONLY_TRAIN_KEYS, add_train, build_parser
    from pipeline.training import TrainOptions

    train = next(
        a for a in build_parser(add_train)._subparsers._group_actions[0].choices.values() if a.prog.endswith("train")
    )
    flags = {action.dest for action in train._actions}
    assert set(CONFIG_ONLY_TRAIN_KEYS) == set(TrainOptions.names()) - flags


def test_help_and_option_checks_do_not_load_torch() -> None:
    """``tilewise --help`` answers without waiting for torch and dask to load."""
    code = (
        "import sys; from pipeline.cli import main; from pipeline.options import PredictOptions;"
        "PredictOptions(precision='bf16', tta='flips');"
        "print(sorted(m for m in ('torch', 'dask') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_public_name_of_the_api_resolves() -> None:
    import pipeline

    assert sorted(pipeline.__all__) == sorted(pipeline._SOURCES)
    for name in pipeline.__all__:
        assert getattr(pipeline, name).__name__ == name
    assert set(pipeline.__all__) <= set(dir(pipeline))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = pipeline.no_such_name
