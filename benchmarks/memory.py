"""Memory benchmark: ``tilewise info``'s estimated peak against the measured peak RSS of the run it plans.

    python -m benchmarks.memory [--sizes 4096 8192 16384] [--plans default 1GB] [--workdir /tmp/tilewise-memory]

For each generated RGB GeoTIFF size (written to ``--workdir``, never to the repository) and each plan (``default``:
no memory option; anything else is passed as ``--memory-limit``), one ``tilewise info`` and one
``tilewise predict`` (COG labels), each in a fresh process. The model is a random U-Net of width 16, depth 4 and
5 classes on 512² tiles (``--classes``, ``--width``, ``--tile`` to change). The run's peak RSS is sampled
with psutil every 20 ms (the whole process, the assembly of the COG included) and checked against the
kernel's high-water mark (``wait4``'s ``ru_maxrss``), the higher of the two reported; the table prints the
estimate, the measured peak, their ratio, the wall time and the CPU time (user + system: on a shared machine
the work a plan costs, where the wall time also says how long other processes held the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from .predict import _scene

MIB = 2**20


def _checkpoint(workdir: Path, classes: int, width: int, tile: int) -> Path:
    import torch

    from pipeline import ModelCard, UNetConfig, build_model, save_checkpoint
    from tiling import Normalization

    path = workdir / f"unet_c{classes}_w{width}_t{tile}.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        config = UNetConfig(in_channels=3, classes=classes, base_width=width, depth=4)
        names = tuple(f"class {i}" for i in range(max(classes, 2)))
        card = ModelCard(config, Normalization((128.0,) * 3, (64.0,) * 3), names, tile)
        save_checkpoint(path, build_model(config), card)
    return path


def _plan_args(plan: str) -> list[str]:
    return [] if plan == "default" else ["--memory-limit", plan]


def _estimate(scene: Path, checkpoint: Path, output: Path, plan: str) -> tuple[float, str]:
    """``tilewise info``'s estimated peak (MiB) and its chunk line."""
    command = ["tilewise", "info", str(scene), str(output), "--model", str(checkpoint), *_plan_args(plan)]
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    memory = re.search(r"^memory\s+about ([0-9.,]+) (MiB|GiB) at peak", text, re.M)
    chunks = re.search(r"^chunks\s+(.*)$", text, re.M)
    if memory is None or chunks is None:
        raise RuntimeError(f"cannot read the plan from tilewise info:\n{text}")
    value = float(memory.group(1).replace(",", "")) * (1024 if memory.group(2) == "GiB" else 1)
    return value, chunks.group(1)


def _measure(command: list[str]) -> tuple[float, float, float, float]:
    """Wall seconds, peak RSS sampled (MiB), the kernel's high-water mark of RSS (MiB) and the CPU seconds
    (user + system) of ``command``."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        process = psutil.Process(child.pid)
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (not the largest child so far)
        seconds = time.perf_counter() - began
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}): {err.read().strip()}")
    return seconds, peak[0] / MIB, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--plans", nargs="+", default=["default", "1GB"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tilewise-memory"))
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--tile", type=int, default=512)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = _checkpoint(args.workdir, args.classes, args.width, args.tile)
    print(f"model: U-Net width {args.width}, depth 4, {args.classes} classes, {args.tile}² tiles; COG labels")
    header = f"{'size':>6} {'plan':>8} {'chunks':<44} {'estimate':>9} {'peak RSS':>9} {'est/peak':>8} {'wall':>7}"
    header += f" {'CPU':>7}"
    print(header, flush=True)
    rows = []
    for size in args.sizes:
        scene = _scene(args.workdir, size)
        for plan in args.plans:
            output = args.workdir / f"out_{size}_{plan}.tif"
            estimate, chunks = _estimate(scene, checkpoint, output, plan)
            command = ["tilewise", "predict", str(scene), str(output), "--model", str(checkpoint), "--overwrite"]
            seconds, peak, high_water, cpu = _measure([*command, *_plan_args(plan)])
            peak = max(peak, high_water)  # sampling can miss a short spike; the kernel's mark cannot
            row = f"{size:>6} {plan:>8} {chunks:<44} {estimate:>6.0f} MiB {peak:>5.0f} MiB {estimate / peak:>8.2f} "
            print(row + f"{seconds:>6.1f}s {cpu:>6.1f}s", flush=True)
            rows.append((size, plan, peak))
            output.unlink(missing_ok=True)
    for plan in args.plans:
        peaks = sorted((size, peak) for size, p, peak in rows if p == plan)
        if len(peaks) > 1:
            print(f"{plan}: peak RSS at {peaks[-1][0]}² / at {peaks[0][0]}² = {peaks[-1][1] / peaks[0][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
