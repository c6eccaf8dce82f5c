"""Writes that fail for real: the CLI in a subprocess under a file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored,
so a write past the limit fails with EFBIG), failing in the chunk phase and, separately, in the assembly.

Each failed run must exit 1 with one line on stderr, leave nothing at the output path, keep the work store with
the chunks it finished, and a ``--resume`` with the limit lifted must give the output an uninterrupted run gives.

The scene's first rows are nodata, so its first chunks (written first: one chunk in flight) compress to almost
nothing and pass the limit; its later chunks do not. For the assembly, chunks are small and the assembled file is
large. A Zarr output's assembly writes no file larger than the chunk phase did (zarr rewrites metadata files
whole and the pyramid's chunks have level 0's shape), so a file-size limit cannot fail it there; its failure
modes are those of the chunk phase.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr

from pipeline import predict

from .conftest import make_checkpoint, random_image, write_geotiff

ALL_FORMATS = ["out.tif", "out.ome.tif", "out.ome.zarr", "out.zarr"]
TIFF_FORMATS = ["out.tif", "out.ome.tif"]
#: Lets the store's metadata and the nodata chunks through, not a chunk of probabilities (64² float32).
CHUNK_PHASE_LIMIT = 8 * 2**10
#: Lets every chunk file through (at most 16 KiB), not the assembled 256 x 320 float32 file.
ASSEMBLY_LIMIT = 40 * 2**10


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("write-failures")
    image = random_image((3, 256, 320), seed=5)
    image[:, :128] = 0  # nodata: the first two rows of chunks are empty
    return {
        "scene": write_geotiff(folder / "scene.tif", image, nodata=0),
        "model": make_checkpoint(folder / "m.safetensors", tile=32),
        "folder": folder,
    }


def _limited(limit: int | None):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def tilewise(files: dict[str, Path], out: Path, *extra: str, limit: int | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pipeline.cli", "predict", str(files["scene"]), str(out), "--model"]
    argv += [str(files["model"]), "--output-kind", "probs", "--chunk", "64", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # warnings must not reach the terminal either way
    return subprocess.run(
        [*argv, *extra], capture_output=True, text=True, preexec_fn=_limited(limit), env=env, check=False
    )


def read_probs(out: Path) -> np.ndarray:
    if out.name.endswith(".ome.tif"):
        return tifffile.imread(out)
    if out.suffix == ".tif":
        with rasterio.open(out) as ds:
            return ds.read()
    group = zarr.open_group(str(out), mode="r")
    return np.asarray(group["0" if out.name.endswith(".ome.zarr") else "probs"][:])


def assert_same_output(probs: np.ndarray, reference: np.ndarray) -> None:
    """The same probabilities up to float32 rounding: a resumed run re-runs the tiles of finished chunks that reach
    into unfinished ones and adds their sums in another order, and the references ran in another process."""
    np.testing.assert_array_equal(np.isnan(probs), np.isnan(reference))
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-6)


def _done_flags(out: Path) -> np.ndarray:
    return zarr.open_group(str(out) + ".partial", mode="r")["done"][:]


@pytest.fixture(scope="module")
def references(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Uninterrupted runs, in this process with the subprocesses' settings (one chunk in flight)."""
    found = {}
    for name in ALL_FORMATS:
        out = files["folder"] / f"ref-{name}"
        predict(files["scene"], out, files["model"], output_kind="probs", chunk=64, workers=1)
        found[name] = read_probs(out)
    return found


def _assert_failed_and_kept(done: subprocess.CompletedProcess, out: Path) -> np.ndarray:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tilewise: error: file too large") and "--resume" in lines[0], lines[0]
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))
    assert leftovers == [out.name + ".partial"], leftovers
    return _done_flags(out)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_failure_in_the_chunk_phase_keeps_the_finished_chunks(files, references, name: str) -> None:
    out = files["folder"] / f"chunks-{name}"
    flags = _assert_failed_and_kept(tilewise(files, out, limit=CHUNK_PHASE_LIMIT), out)
    assert 0 < flags.sum() < flags.size  # the nodata chunks were written and flagged, the first real one failed
    resumed = tilewise(files, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_output(read_probs(out), references[name])
    assert not Path(str(out) + ".partial").exists()


@pytest.mark.parametrize("name", TIFF_FORMATS)
def test_failure_in_the_assembly_keeps_every_chunk(files, references, name: str) -> None:
    out = files["folder"] / f"assembly-{name}"
    flags = _assert_failed_and_kept(tilewise(files, out, limit=ASSEMBLY_LIMIT), out)
    assert flags.all()
    resumed = tilewise(files, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "0 chunk(s) computed" in resumed.stderr  # every chunk was kept: only the assembly ran again
    assert_same_output(read_probs(out), references[name])


def test_failure_before_any_chunk_leaves_nothing(files) -> None:
    out = files["folder"] / "nothing.zarr"
    done = tilewise(files, out, "--chunk", "256", limit=CHUNK_PHASE_LIMIT)  # the first chunk holds real pixels
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "--resume" not in done.stderr, done.stderr
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name)]


def test_no_space_in_the_assembly_names_the_free_space(files, tmp_path: Path) -> None:
    """A real ENOSPC: the COG's level-0 intermediate is a link to /dev/full, where every write fails so."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    out = tmp_path / "full.tif"
    out.with_name("full.tif.assembling.level0").symlink_to("/dev/full")
    done = tilewise(files, out)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no space left on the device writing" in lines[0] and "free there" in lines[0], lines[0]
    assert "this run writes up to" in lines[0] and "--resume" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.tif.partial"]


def test_a_work_dir_that_is_a_file_is_one_line_through_the_cli(tmp_path: Path) -> None:
    """--work-dir naming a file: refused before the run starts (a usage error, exit 2) with one line naming it;
    nothing at OUTPUT."""
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 80, 90), seed=4))
    model = make_checkpoint(tmp_path / "m.safetensors")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "out.tif"
    cli = [sys.executable, "-m", "pipeline.cli", "predict", str(scene), str(out), "--model", str(model)]
    done = subprocess.run([*cli, "--work-dir", str(blocker)], capture_output=True, text=True, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("tilewise: error:") and str(blocker) in lines[0], lines[0]
    assert not out.exists()
