"""Runs on a Dask cluster (started on loopback inside the tests): same output as threads, a lost worker costs
time and not data, GPU tasks refuse a cluster without GPUs."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import predict
from pipeline.cli import main
from tiling import OptionError

from .conftest import make_checkpoint, random_image, write_geotiff

distributed = pytest.importorskip("distributed")

OPTIONS = {"tile": 64, "overlap": 16, "chunk": 96, "output_kind": "probs"}


def _probs(path: Path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["probs"][:]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cluster")
    scene = write_geotiff(folder / "scene.tif", random_image((3, 320, 400), seed=31))
    model = make_checkpoint(folder / "m.safetensors", tile=64, base_width=8)
    reference = folder / "threads.zarr"
    predict(scene, reference, model, **OPTIONS)
    return {"scene": scene, "model": model, "reference": reference, "folder": folder}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def test_cluster_output_equals_threads_and_each_worker_loads_the_model_once(files, cluster) -> None:
    out = files["folder"] / "cluster.zarr"
    report = predict(files["scene"], out, files["model"], scheduler=cluster.scheduler_address, **OPTIONS)
    np.testing.assert_allclose(_probs(out), _probs(files["reference"]), atol=1e-5, rtol=0)
    assert report.tiles_run == report.tiles_total and report.workers == 2
    with distributed.Client(cluster) as client:
        loads = client.run(lambda: __import__("pipeline.cache").cache.model_cache().loads)
    assert sum(loads.values()) >= 1 and all(n <= 1 for n in loads.values()), loads


def test_gpu_tasks_on_a_cluster_without_gpus_fail_fast(files, cluster) -> None:
    began = time.monotonic()
    with pytest.raises(OptionError, match="none of the cluster's 2 worker"):
        predict(
            files["scene"],
            files["folder"] / "gpu.zarr",
            files["model"],
            scheduler=cluster.scheduler_address,
            device="cuda",
            **OPTIONS,
        )
    assert time.monotonic() - began < 30
    assert not (files["folder"] / "gpu.zarr").exists()


def test_cli_local_cluster_with_performance_report(files, capsys) -> None:
    out, report = files["folder"] / "cli.zarr", files["folder"] / "report.html"
    code = main(
        [
            "predict",
            str(files["scene"]),
            str(out),
            "--model",
            str(files["model"]),
            "--cluster",
            "local:2",
            "--report",
            str(report),
            "--tile",
            "64",
            "--overlap",
            "16",
            "--chunk",
            "96",
            "--output-kind",
            "probs",
        ]
    )
    assert code == 0, capsys.readouterr().err
    np.testing.assert_allclose(_probs(out), _probs(files["reference"]), atol=1e-5, rtol=0)
    assert report.stat().st_size > 10_000 and b"<html" in report.read_bytes()[:2000].lower()


def test_a_worker_killed_mid_run_costs_time_not_data(files) -> None:
    out = files["folder"] / "killed.zarr"
    store = out.with_name("killed.zarr.partial")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c,
        distributed.Client(c) as client,
    ):
        pids = client.run(os.getpid)
        killed: list[int] = []

        def kill_one_worker_once_work_is_under_way() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if zarr.open_group(str(store), mode="r")["done"][:].sum() >= 2:
                        break
                except Exception:
                    pass
                time.sleep(0.02)
            pid = next(iter(pids.values()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        killer = threading.Thread(target=kill_one_worker_once_work_is_under_way)
        killer.start()
        report = predict(files["scene"], out, files["model"], scheduler=c.scheduler_address, **OPTIONS)
        killer.join()
    assert killed, "no worker was killed"
    assert report.chunks_computed == report.chunks
    np.testing.assert_allclose(_probs(out), _probs(files["reference"]), atol=1e-5, rtol=0)


def test_work_store_at_an_fsspec_url_shared_by_the_workers(files, cluster) -> None:
    work = files["folder"] / "scratch"
    work.mkdir()
    out = files["folder"] / "via_url.zarr"
    predict(
        files["scene"], out, files["model"], scheduler=cluster.scheduler_address, work_dir=f"file://{work}", **OPTIONS
    )
    np.testing.assert_allclose(_probs(out), _probs(files["reference"]), atol=1e-5, rtol=0)
    assert list(work.iterdir()) == []  # the store was copied to the output and removed
    cog = files["folder"] / "via_url.tif"
    predict(
        files["scene"],
        cog,
        files["model"],
        scheduler=cluster.scheduler_address,
        work_dir=f"file://{work}",
        **{**OPTIONS, "output_kind": "labels"},
    )
    assert cog.exists() and list(work.iterdir()) == []


def test_workers_share_their_hosts_cores_between_torch_threads(cluster) -> None:
    from distributed.comm import get_address_host

    from pipeline.cluster import _torch_threads_plugin, share_cores
    from pipeline.devices import available_cores

    def torch_threads() -> int:
        return __import__("torch").get_num_threads()

    with distributed.Client(cluster) as client:
        hosts = {get_address_host(a) for a in client.nthreads()}
        client.register_plugin(_torch_threads_plugin(dict.fromkeys(hosts, 1)))  # as if each worker had its host
        assert set(client.run(torch_threads).values()) == {available_cores()}
        share_cores(client)  # two single-threaded workers on this host
        assert set(client.run(torch_threads).values()) == {max(1, available_cores() // 2)}


def test_local_workers_keep_glibcs_adaptive_mmap_threshold() -> None:
    from pipeline.cluster import local_cluster

    with local_cluster(1) as c, distributed.Client(c) as client:
        names = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "GDAL_CACHEMAX")
        env = client.run(lambda: {k: os.environ.get(k) for k in names})
    assert list(env.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_ARENA_MAX": "2", "GDAL_CACHEMAX": "64"}]
