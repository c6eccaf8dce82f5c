"""Scale-out benchmark: the threaded scheduler against a local cluster of worker processes, and the graph for a
raster far larger than any test.

    python -m benchmarks.cluster [--size 8192] [--workdir /tmp/tilewise-bench]

Prints, for the generated ``size``² RGB scene: wall time on threads and on ``local:2`` with the default U-Net and
with a 1×1-conv model (where scheduling overhead shows), the number of tasks, and the per-task overhead of each
scheduler measured on a graph of no-op tasks. Then, for a simulated 200 000 × 200 000 raster (graph built, not
run): tasks, build time, pickled size and the time dask takes to order it.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

from benchmarks.predict import _default_checkpoint, _scene


def _noop(*_: object) -> None:
    return None


def per_task_overhead(client, n: int = 2000) -> dict[str, float]:
    """Seconds per task of a chain-free graph of ``n`` no-op tasks, on threads and on the cluster."""
    import dask.threaded

    dsk = {("noop", i): (_noop, i) for i in range(n)}
    dsk["sink"] = (_noop, list(dsk))
    began = time.perf_counter()
    dask.threaded.get(dsk, "sink", num_workers=2)
    threads = (time.perf_counter() - began) / n
    began = time.perf_counter()
    client.get(dsk, "sink")
    cluster = (time.perf_counter() - began) / n
    return {"threads_ms": threads * 1e3, "cluster_ms": cluster * 1e3}


class SimulatedReader:
    """A reader of a raster that exists only as a shape (the graph is built, never run)."""

    def __init__(self, height: int, width: int) -> None:
        from tiling.readers.base import RasterInfo

        self.info = RasterInfo("simulated", "none", height, width, 3, "uint8")
        self.bands = (1, 2, 3)

    def read(self, rows, cols):  # pragma: no cover - never called
        raise RuntimeError("simulated raster")

    def close(self) -> None:
        pass


def simulated_graph(side: int, checkpoint: Path, workdir: Path, client) -> dict[str, float]:
    """Build (never run) the graph of a ``side``² raster with its write tasks; time dask's ordering and the
    distributed scheduler taking it in (tasks pinned to a worker that does not exist, then cancelled)."""
    import dask.order

    from pipeline.graph import GraphKeys, TileJob, build_graph
    from pipeline.runner import ModelSpec
    from tiling import ChunkPlan, Normalization, TileGrid
    from tiling.writers import OutputContent, OutputSpec, StoreLocation, WorkStore, output_layers

    began = time.perf_counter()
    grid = TileGrid(side, side, 256, 64)
    plan = ChunkPlan(grid, (2048, 2048))
    job = TileJob(
        256, "gaussian", 0.125, Normalization((128.0,) * 3, (64.0,) * 3), 1, ModelSpec.for_checkpoint(checkpoint)
    )
    reader = SimulatedReader(side, side)
    names = ("background", "foreground")
    content = OutputContent(reader.info, output_layers(OutputSpec(), names, 1), names)
    work = StoreLocation(str(workdir / "simulated.tif.partial"))
    paths = {"labels": "labels"}
    out = WorkStore.create(work, content, plan.chunk, plan.shape, {"simulated": True}, {}, paths)  # metadata only
    keys = GraphKeys("sim")
    dsk = build_graph(reader, plan, job, keys, outputs=out, lookahead=None)
    build = time.perf_counter() - began
    size = len(pickle.dumps(dsk, protocol=pickle.HIGHEST_PROTOCOL))
    began = time.perf_counter()
    dask.order.order(dsk)
    ordering = time.perf_counter() - began

    began = time.perf_counter()
    future = client.get(dsk, keys.done, sync=False, workers=["tcp://127.0.0.1:1"], allow_other_workers=False)
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) < len(dsk):
        time.sleep(0.05)
    accepted = time.perf_counter() - began
    future.cancel()
    work.remove()
    return {
        "chunks": plan.n_chunks,
        "tiles": grid.n_tiles,
        "tasks": len(dsk),
        "build_s": build,
        "pickled_mib": size / 2**20,
        "dask_order_s": ordering,
        "distributed_accept_s": accepted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tilewise-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    import distributed

    from benchmarks.predict import _pointwise_checkpoint
    from pipeline import predict
    from pipeline.cluster import local_cluster

    scene = _scene(args.workdir, args.size)
    unet = _default_checkpoint(args.workdir)
    pointwise_path = args.workdir / "pointwise.safetensors"
    if not pointwise_path.exists():
        from pipeline import save_checkpoint
        from pipeline.model import UNet

        # A U-Net of depth 1 and width 1 is the closest checkpointable stand-in for a 1x1 conv: nearly free.
        point = _pointwise_checkpoint()
        save_checkpoint(pointwise_path, UNet(point.card.model), point.card)
    results = {}
    with local_cluster(2) as c:  # as --cluster local:2 starts it, kept for all runs
        with distributed.Client(c) as client:
            overhead = per_task_overhead(client)
            sim = simulated_graph(200_000, unet, args.workdir, client)
        for name, model in (("tiny model", pointwise_path), ("default U-Net", unet)):
            for scheduler in ("threads", c.scheduler_address):
                out = args.workdir / "cluster_out.tif"
                report = predict(scene, out, model, overwrite=True, scheduler=scheduler)
                label = "threads" if scheduler == "threads" else "local:2"
                results[(name, label)] = report
                print(
                    f"{name:14s} {label:8s} {report.seconds:7.2f} s  chunks={report.chunks} tiles={report.tiles_run}",
                    flush=True,
                )
    tasks = 4 * results[("tiny model", "threads")].chunks + 1  # read/run, spill, blend, write per chunk; the sum
    print(
        f"\ngraph of the {args.size}² run: {tasks} tasks "
        f"({results[('tiny model', 'threads')].chunks} chunks x read/run, spill, blend, write)"
    )
    print(
        f"per-task overhead (no-op tasks): threads {overhead['threads_ms']:.3f} ms, "
        f"local:2 {overhead['cluster_ms']:.3f} ms"
    )
    for name in ("tiny model", "default U-Net"):
        t, c2 = results[(name, "threads")].seconds, results[(name, "local:2")].seconds
        print(f"{name}: threads {t:.2f} s, local:2 {c2:.2f} s (local:2 / threads = {c2 / t:.2f})")
    print(
        "\nsimulated 200 000 x 200 000 raster (built, not run): "
        + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in sim.items())
    )


if __name__ == "__main__":
    main()
