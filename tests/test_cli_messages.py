"""What a user meets on the command line: file modes under the umask, errors that name the flag and suggest
the nearest key, and errors worded for the interface that raised them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline import predict
from tiling import OutputError

from .conftest import make_checkpoint, random_image, write_geotiff
from .test_cli import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "scene": write_geotiff(tmp_path / "scene.tif", random_image((3, 120, 140))),
        "model": make_checkpoint(tmp_path / "model.safetensors", tile=64),
    }


def test_every_file_follows_the_umask(files, tmp_path: Path) -> None:
    code = (
        "import os, sys; os.umask(0o022); sys.path.insert(0, sys.argv[1]);"
        "from tests.conftest import make_checkpoint; make_checkpoint(__import__('pathlib').Path(sys.argv[2]));"
        "from pipeline.cli import main;"
        "sys.exit(main(['predict', sys.argv[3], sys.argv[4], '--model', sys.argv[2], '--output-kind',"
        " 'labels,instances', '--objects', sys.argv[5], '--vector', sys.argv[6], '--preview', sys.argv[7]]))"
    )
    names = ("model.safetensors", "out.tif", "objects.csv", "objects.geojson", "preview.png")
    paths = [tmp_path / "out" / name for name in names]
    paths[0].parent.mkdir()
    args = [str(ROOT), str(paths[0]), str(files["scene"]), *map(str, paths[1:])]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    written = sorted(paths[0].parent.iterdir())
    assert len(written) == 6  # the five asked for, and the instances beside the labels
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_unknown_config_keys_and_options_suggest_the_nearest(files, capsys, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("predict:\n  overlpa: 0.5\n")
    code, err = run_cli(
        capsys, "predict", files["scene"], tmp_path / "o.tif", "--model", files["model"], "--config", config
    )
    assert_one_line_error(code, err, 2, "overlpa", "did you mean 'overlap'")
    code, err = run_cli(
        capsys, "predict", files["scene"], tmp_path / "o.tif", "--model", files["model"], "--output-kind", "label"
    )
    assert_one_line_error(code, err, 2, "--output-kind", "labels, probs, both, instances")


def test_errors_name_the_flag_on_the_command_line_and_the_argument_in_python(files, capsys, tmp_path: Path) -> None:
    out = tmp_path / "o.tif"
    out.write_bytes(b"taken")
    code, err = run_cli(capsys, "predict", files["scene"], out, "--model", files["model"])
    assert_one_line_error(code, err, 1, "already exists", "--overwrite")
    with pytest.raises(OutputError, match=r"overwrite=True"):
        predict(files["scene"], out, files["model"])


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipeline.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


def test_no_third_party_line_reaches_the_terminal(tmp_path: Path) -> None:
    """Real processes (C-level output included): a PNG input, a slide with polygons and a COG run each print
    only tilewise's own final line; a 4-band PNG for a 3-band model, one error line."""
    from PIL import Image

    model = make_checkpoint(tmp_path / "m.safetensors", tile=64)
    rgb = random_image((3, 100, 120))
    png = tmp_path / "photo.png"
    Image.fromarray(np.moveaxis(rgb, 0, 2)).save(png)
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, np.moveaxis(rgb, 0, 2), photometric="rgb", resolution=(40000, 40000), resolutionunit=3)
    scene = write_geotiff(tmp_path / "scene.tif", rgb)
    runs = [
        ("predict", png, tmp_path / "png.tif", "--model", model),
        ("predict", slide, tmp_path / "slide.ome.tif", "--model", model, "--vector", tmp_path / "s.geojson"),
        ("predict", scene, tmp_path / "scene_out.tif", "--model", model),
    ]
    for argv in runs:
        done = _cli(*argv)
        assert done.returncode == 0, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wrote "), done.stderr
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([np.moveaxis(rgb, 0, 2), np.full((100, 120, 1), 255, np.uint8)], axis=2)).save(rgba)
    done = _cli("predict", rgba, tmp_path / "rgba.tif", "--model", model)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "4 available" in done.stderr and "--bands" in done.stderr
