"""Core-engine benchmark: end-to-end ``predict`` against baselines measured in the same process.

    python -m benchmarks.predict [--sizes 4096 8192] [--workdir /tmp/tilewise-bench]

For each generated RGB GeoTIFF size, two child processes (so peak RSS is per run):
- model-bound: the default U-Net; ratio = time of the model alone on the same tiles, laid out as the run lays
  them out (same threads, same batch size) / end-to-end time (fastest of each side over alternating runs: at
  least 5 pairs and 3 minutes of runs), with two figures taken inside each run beside it (see
  ``child_model_bound``);
- instances: the default U-Net writing labels against the same run also writing instances (objects found,
  measured and numbered); ratio = the second's time / the first's (best of alternating runs). A random model
  finds next to no objects, so ``objects`` does the same with the demo model, which finds thousands of
  buildings in the synthetic scene;
- pipeline-bound: a 1×1-conv model (a GPU that makes the model nearly free); ratio = end-to-end time /
  a plain windowed rasterio copy that reads every band and writes a uint8 map of the same raster (best of 3
  alternating runs of each, in the same process).
Each child also reports tiles run vs tiles in the grid and its peak RSS right after ``predict``; the
pipeline-bound child runs in three fresh processes and the one with the median peak RSS is reported.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scene(workdir: Path, size: int) -> Path:
    from sample_data.generate import write_scene

    path = workdir / f"scene_{size}.tif"
    if not path.exists():
        partial = path.with_suffix(".partial.tif")
        write_scene(partial, None, size, size, seed=1)
        partial.rename(path)
    return path


def _default_checkpoint(workdir: Path) -> Path:
    import torch

    from pipeline import ModelCard, UNetConfig, build_model, save_checkpoint
    from tiling import Normalization

    path = workdir / "default_unet.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        config = UNetConfig(in_channels=3, classes=1)
        card = ModelCard(config, Normalization((128.0,) * 3, (64.0,) * 3), ("background", "building"), 256)
        save_checkpoint(path, build_model(config), card)
    return path


def _pointwise_checkpoint():
    import torch

    from pipeline import Checkpoint, ModelCard, UNetConfig
    from tiling import Normalization

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 1, kernel_size=1)
    # The card describes the tile geometry and classes; the module itself is the 1×1 conv.
    card = ModelCard(
        UNetConfig(3, 1, base_width=1, depth=1),
        Normalization((128.0,) * 3, (64.0,) * 3),
        ("background", "building"),
        256,
    )
    return Checkpoint(conv.eval(), card)


def _tile_batches(scene: Path, grid, batch: int) -> list[np.ndarray]:
    """The tiles of ``grid`` (the run's) over ``scene``, raw pixels in the grid's order, stacked in batches of
    ``batch``."""
    import rasterio

    with rasterio.open(scene) as src:
        image = src.read()
    tile = grid.tile
    origins = [(t.y, t.x) for t in grid.tiles()]
    return [
        np.stack([image[:, y : y + tile, x : x + tile] for y, x in origins[start : start + batch]])
        for start in range(0, len(origins), batch)
    ]


def _model_alone(runner, batches: list[np.ndarray], workers: int) -> tuple[float, float]:
    """Seconds, and CPU seconds of the forward threads, to take ``batches`` (stacked raw tiles) through the
    runner's forward pass (normalisation, model, probabilities: what the run's forward threads do with a batch)
    the way the pipeline lays out the work: ``workers`` threads side by side, each with its share of the cores,
    each taking the next batch until none is left (as the forward pool's threads do, so a core that runs slower
    for a while does not leave the other idle at the end). Each thread runs one batch before the clock starts,
    as the pool's threads, which live from run to run, have."""
    import itertools
    import threading

    from pipeline.devices import cpu_threads

    normalization = runner.card.normalization
    taken = itertools.count()
    warm = threading.Barrier(workers + 1)
    cpu_seconds: list[float] = []

    def work() -> None:
        runner.probabilities(batches[0], None, normalization)
        warm.wait()
        began = time.thread_time()
        while (index := next(taken)) < len(batches):  # a shared counter: next() on it is atomic under the GIL
            runner.probabilities(batches[index], None, normalization)
        cpu_seconds.append(time.thread_time() - began)

    with cpu_threads(workers):
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        warm.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - began, sum(cpu_seconds)


def child_model_bound(scene: Path, workdir: Path, min_runs: int = 5, min_seconds: float = 180.0) -> dict[str, float]:
    """The run and the model alone, alternating (run first in odd pairs, model alone first in even ones, so a
    steady drift favours neither), until each side ran ``min_runs`` times and the runs took ``min_seconds`` in
    all; ratio = fastest model alone / fastest run.

    This machine's speed drifts by up to 20 % between consecutive identical runs, so one slow phase can decide
    a single pair: the fastest of several of each side is the figure. Printed beside it: the median of the
    pairs' own ratios; ``model_share``, the CPU seconds of the run's forward passes over its core-seconds (wall
    time × forward threads; the rest is the pipeline's own work and idle cores), taken inside each run, where no
    drift can fall between the sides; and ``forward_cpu_ratio``, the median over the pairs of the CPU seconds per
    tile of the model alone over those of the run's forward passes (below 1 where the forward passes run slower
    inside the run). The ratio is about their product.
    """
    from pipeline import predict
    from pipeline.cache import model_cache
    from pipeline.options import PredictOptions
    from pipeline.run_plan import plan_run

    checkpoint = _default_checkpoint(workdir)
    out = workdir / f"out_model_{scene.stem}.tif"
    # The run's own grid and runner (what predict sets up), loaded before the first run as the later runs find
    # it: every run is timed with the model in memory, and the model alone is the very model the run used.
    with plan_run(scene, checkpoint, PredictOptions()) as plan:
        runner = model_cache().runner(plan.job.model)
    runs: list[float] = []
    alone: list[float] = []
    run_cpu: list[float] = []  # CPU seconds of the forward passes, each side
    alone_cpu: list[float] = []
    peak, report = 0.0, None

    def one_run() -> None:
        nonlocal peak, report
        cpu_before = runner.forward_cpu_seconds
        report = predict(scene, out, checkpoint, overwrite=True)
        if not runs:
            peak = _peak_rss_mib()
        runs.append(report.seconds)
        run_cpu.append(runner.forward_cpu_seconds - cpu_before)
        if not run_cpu[-1]:
            raise RuntimeError("the run did not use the benchmark's runner: its model spec differs")

    batches: list[np.ndarray] = []
    while len(runs) < min_runs or sum(runs) < min_seconds:
        run_first = len(runs) % 2 == 0  # so the first pair, which gives the model alone its layout
        if run_first:
            one_run()
        assert report is not None
        if not batches:  # the run's batch size, chosen during the first run
            batches = _tile_batches(scene, plan.grid, report.batch_size or 1)
            assert sum(len(b) for b in batches) == report.tiles_run
        seconds, cpu = _model_alone(runner, batches, report.workers)
        alone.append(seconds)
        alone_cpu.append(cpu)
        if not run_first:
            one_run()
    assert report is not None
    return {
        "end_to_end_s": min(runs),
        "model_alone_s": min(alone),
        "ratio": min(alone) / min(runs),
        "paired_median": float(np.median([a / r for a, r in zip(alone, runs, strict=True)])),
        "model_share": float(np.median([c / (r * report.workers) for c, r in zip(run_cpu, runs, strict=True)])),
        "forward_cpu_ratio": float(np.median([a / r for a, r in zip(alone_cpu, run_cpu, strict=True)])),
        "pairs": len(runs),
        "runs_s": "/".join(f"{t:.1f}" for t in runs),
        "alone_s": "/".join(f"{t:.1f}" for t in alone),
        "tiles_run": report.tiles_run,
        "tiles_grid": report.tiles_total,
        "batch": report.batch_size or 1,
        "chunk": report.chunk,
        "workers": report.workers,
        "peak_rss_mib": peak,
    }


def _rasterio_copy(scene: Path, copy: Path) -> float:
    """Seconds for a plain windowed copy: read every band, write a uint8 map with the same creation options."""
    import rasterio
    from rasterio.windows import Window

    began = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": 1,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "predictor": 2,
            "nodata": 255,
        }
        with rasterio.open(copy, "w", **profile) as dst:
            step = 1024
            for row in range(0, src.height, step):
                for col in range(0, src.width, step):
                    window = Window(col, row, min(step, src.width - col), min(step, src.height - row))
                    data = src.read(window=window)
                    dst.write((data.mean(axis=0) > 127).astype(np.uint8), 1, window=window)
    return time.perf_counter() - began


def child_pipeline_bound(scene: Path, workdir: Path, repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats`` for both, alternating, so neither side gains from a warmer process or cache."""
    from pipeline import predict

    checkpoint = _pointwise_checkpoint()
    out, copy = workdir / f"out_pointwise_{scene.stem}.tif", workdir / f"copy_{scene.stem}.tif"
    runs, copies, peak, report = [], [], 0.0, None
    for attempt in range(repeats):
        report = predict(scene, out, checkpoint, overwrite=True)
        if attempt == 0:
            peak = _peak_rss_mib()  # of the first run, in a fresh process like a user's
        runs.append(report.seconds)
        copies.append(_rasterio_copy(scene, copy))
    assert report is not None
    return {
        "end_to_end_s": min(runs),
        "rasterio_copy_s": min(copies),
        "ratio": min(runs) / min(copies),
        "tiles_run": report.tiles_run,
        "tiles_grid": report.tiles_total,
        "chunk": report.chunk,
        "workers": report.workers,
        "peak_rss_mib": peak,
    }


def child_instances(scene: Path, workdir: Path) -> dict[str, float]:
    return _instances_against_labels(scene, workdir, _default_checkpoint(workdir))


def child_objects(scene: Path, workdir: Path) -> dict[str, float]:
    return _instances_against_labels(scene, workdir, ROOT / "sample_data" / "demo_model.safetensors")


def _instances_against_labels(scene: Path, workdir: Path, checkpoint: Path, pairs: int = 3) -> dict[str, float]:
    """A model writing labels, against the same run also finding, measuring and numbering objects
    (``--output-kind labels,instances``): best of ``pairs`` alternating runs each, in one process."""
    from pipeline import predict

    plain, with_objects, peak, report = [], [], 0.0, None
    for attempt in range(pairs):
        first, second = ("labels", "labels,instances") if attempt % 2 == 0 else ("labels,instances", "labels")
        for kind in (first, second):
            out = workdir / f"out_{kind.replace(',', '_')}_{scene.stem}.zarr"
            run = predict(scene, out, checkpoint, output_kind=kind, overwrite=True)
            (with_objects if "instances" in kind else plain).append(run.seconds)
            if "instances" in kind:
                report = run
                peak = max(peak, _peak_rss_mib())
    assert report is not None and report.objects is not None
    return {
        "labels_s": min(plain),
        "labels_instances_s": min(with_objects),
        "ratio": min(with_objects) / min(plain),
        "objects": sum(report.objects.values()),
        "tiles_run": report.tiles_run,
        "tiles_grid": report.tiles_total,
        "chunk": report.chunk,
        "workers": report.workers,
        "peak_rss_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-bench")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["pipeline", "model", "instances", "objects"],
        choices=[*CHILDREN, "backends"],
    )
    parser.add_argument("--pipeline-processes", type=int, default=3, help="fresh processes per pipeline-bound size")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args.scene, args.workdir)))
        return

    if "backends" in args.modes:  # engines and precisions: benchmarks/backends.py, in processes of their own
        from .backends import ENGINES, run_table

        run_table(args.sizes, args.workdir, list(ENGINES), repeats=2, model="default")
        args.modes.remove("backends")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for size in args.sizes:
        scene = _scene(args.workdir, size)
        for mode in args.modes:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.predict",
                "--child",
                mode,
                "--scene",
                str(scene),
                "--workdir",
                str(args.workdir),
            ]
            # Peak RSS varies by tens of MiB between identical runs (allocator, thread timing): the pipeline-bound
            # figures come from the median of a few fresh processes (the model-bound child runs minutes).
            children = [
                json.loads(
                    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
                )
                for _ in range(args.pipeline_processes if mode == "pipeline" else 1)
            ]
            figures = sorted(children, key=lambda f: f["peak_rss_mib"])[len(children) // 2]
            if len(children) > 1:
                figures["peak_rss_runs_mib"] = "/".join(f"{f['peak_rss_mib']:.0f}" for f in children)
            results[(mode, size)] = figures
            print(
                f"{mode:8s} {size:5d}²  "
                + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()),
                flush=True,
            )

    print("\nsummary")
    for mode in args.modes:
        for size in args.sizes:
            f = results[(mode, size)]
            what = {
                "model": "model alone / end-to-end",
                "pipeline": "end-to-end / rasterio copy",
                "instances": "labels+instances / labels",
                "objects": "labels+instances / labels (demo model)",
            }[mode]
            print(
                f"  {mode}-bound {size}²: {what} = {f['ratio']:.3f}; tiles run / grid = "
                f"{f['tiles_run'] / f['tiles_grid']:.2f}; peak RSS {f['peak_rss_mib']:.0f} MiB"
            )
        if len(args.sizes) >= 2:
            lo, hi = results[(mode, args.sizes[0])], results[(mode, args.sizes[-1])]
            print(
                f"  {mode}-bound peak RSS growth {args.sizes[0]}² → {args.sizes[-1]}²: "
                f"{hi['peak_rss_mib'] / lo['peak_rss_mib']:.3f}x"
            )


CHILDREN = {
    "pipeline": child_pipeline_bound,
    "model": child_model_bound,
    "instances": child_instances,
    "objects": child_objects,
}

if __name__ == "__main__":
    main()
