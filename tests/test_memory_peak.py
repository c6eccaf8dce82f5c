"""The memory plan against a real run: the peak ``tilewise info`` plans for a run, and the peak RSS the kernel
records for that run's own process (``tests/test_memory_model.py`` checks the estimate term by term; this checks
that the terms add up to what a run holds)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.budget import HEAP_ALLOWANCE

from .conftest import make_checkpoint, random_image, write_geotiff

CLI = [sys.executable, "-m", "pipeline.cli"]
#: The environment pytest started with: tests that start a LocalCluster in this process leave the variables its
#: nannies set for their workers (thread counts, the allocator's arenas, Dask's parent pid) in ``os.environ``,
#: which a user's shell does not have.
STARTING_ENV = dict(os.environ)


def _planned_mib(args: list[str]) -> float:
    text = subprocess.run([*CLI, "info", *args], check=True, capture_output=True, text=True, env=STARTING_ENV).stdout
    found = re.search(r"^memory\s+about ([0-9.,]+) (MiB|GiB) at peak", text, re.M)
    assert found, text
    return float(found.group(1).replace(",", "")) * (1024 if found.group(2) == "GiB" else 1)


#: Starts the run and prints the kernel's high-water mark of its resident memory. A child forked from a large
#: process (pytest, late in the suite) and then exec'd carries the parent's size into that mark, so the run is
#: started from this small interpreter instead of from pytest.
MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
sys.stderr.write(child.stderr.read().decode())
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _peak_rss_mib(args: list[str]) -> float:
    """The kernel's high-water mark of the run's resident memory (its own process)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *CLI, "predict", *args],
        capture_output=True,
        text=True,
        env=STARTING_ENV,
        check=True,
    )
    code, kib = done.stdout.split()
    assert code == "0", done.stderr
    return int(kib) / 1024


def test_a_run_s_peak_rss_is_near_what_its_plan_says(tmp_path: Path) -> None:
    """A 1536² scene in 512-px chunks through a 5-class model, probabilities and labels written: the chunks'
    sums are a large part of the run's memory, beside the process's own."""
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 1536, 1536), seed=3))
    model = make_checkpoint(tmp_path / "m.safetensors", classes=5, tile=128, depth=2)
    args = [str(scene), str(tmp_path / "out.zarr"), "--model", str(model), "--chunk", "512"]
    args += ["--output-kind", "both", "--workers", "2"]
    planned, measured = _planned_mib(args), _peak_rss_mib(args)
    said = f"planned {planned:.0f} MiB, the run's peak RSS {measured:.0f} MiB"
    assert measured <= 1.05 * planned, said  # the plan holds the run
    # and does not overstate it by more than the free heap it allows for (which a short run need not use)
    assert planned <= 1.15 * measured + HEAP_ALLOWANCE / 2**20, said
