"""Core-engine benchmark: end-to-end ``predict`` against baselines measured in the same process.

    python -m benchmarks.predict [--sizes 4096 8192] [--workdir /tmp/tilewise-bench]

For each generated RGB GeoTIFF size, two child processes (so peak RSS is per run):
- model-bound: the default U-Net; ratio = time of the model alone on the same tiles / end-to-end time;
- pipeline-bound: a 1×1-conv model (a GPU that makes the model nearly free); ratio = end-to-end time /
  a plain windowed rasterio copy that reads every band and writes a uint8 map of the same raster.
Each child also reports tiles run vs tiles in the grid and its peak RSS right after ``predict``.
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


def _model_alone(model, tiles: int, batch: int, workers: int) -> float:
    """Seconds to run ``tiles`` random tiles through ``model`` the way the pipeline lays out the work:
    ``workers`` threads side by side, each with its share of the cores, batches of ``batch``."""
    import threading

    import torch

    from pipeline.runner import cpu_threads

    def work(n_batches: int) -> None:
        x = torch.randn(batch, 3, 256, 256).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(n_batches):
                torch.sigmoid(model(x))

    batches = -(-tiles // batch)
    with cpu_threads(workers):
        work(1)  # warm-up, as the pipeline's first batch
        threads = [
            threading.Thread(target=work, args=(batches // workers + (w < batches % workers),)) for w in range(workers)
        ]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - began


def child_model_bound(scene: Path, workdir: Path) -> dict[str, float]:
    from pipeline import predict
    from pipeline.runner import ModelSpec, get_runner

    checkpoint = _default_checkpoint(workdir)
    out = workdir / f"out_model_{scene.stem}.tif"
    report = predict(scene, out, checkpoint, overwrite=True)
    peak = _peak_rss_mib()
    spec = ModelSpec.for_checkpoint(checkpoint, channels_last=True, max_batch=8)
    model = get_runner(spec).model
    batch = report.batch_size or 1
    model_alone = _model_alone(model, report.tiles_run, batch, report.workers)
    return {
        "end_to_end_s": report.seconds,
        "model_alone_s": model_alone,
        "ratio": model_alone / report.seconds,
        "tiles_run": report.tiles_run,
        "tiles_grid": report.tiles_total,
        "batch": batch,
        "chunk": report.chunk,
        "workers": report.workers,
        "peak_rss_mib": peak,
    }


def child_pipeline_bound(scene: Path, workdir: Path) -> dict[str, float]:
    import rasterio
    from rasterio.windows import Window

    from pipeline import predict

    out = workdir / f"out_pointwise_{scene.stem}.tif"
    report = predict(scene, out, _pointwise_checkpoint(), overwrite=True)
    peak = _peak_rss_mib()

    copy = workdir / f"copy_{scene.stem}.tif"
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
    baseline = time.perf_counter() - began
    return {
        "end_to_end_s": report.seconds,
        "rasterio_copy_s": baseline,
        "ratio": report.seconds / baseline,
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
    parser.add_argument("--modes", nargs="+", default=["pipeline", "model"], choices=["pipeline", "model"])
    parser.add_argument("--child", choices=["pipeline", "model"], help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    if args.child:
        run = child_model_bound if args.child == "model" else child_pipeline_bound
        print(json.dumps(run(args.scene, args.workdir)))
        return

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
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            results[(mode, size)] = figures = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{mode:8s} {size:5d}²  "
                + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()),
                flush=True,
            )

    print("\nsummary")
    for mode in args.modes:
        for size in args.sizes:
            f = results[(mode, size)]
            what = "model alone / end-to-end" if mode == "model" else "end-to-end / rasterio copy"
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


if __name__ == "__main__":
    main()
