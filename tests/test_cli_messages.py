"""What a user meets on the command line: file modes under the umask, errors that name the flag and suggest
the nearest key, and errors worded for the interface that raised them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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
