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
    with pytest.raises(OptionError, match="none of the cluster's 2 worker"):
        predict(
            files["scene"],
            files["folder"] / "gpu.zarr",
            files["model"],
            scheduler=cluster.scheduler_address,
            device="cuda",
            **OPTIONS,
        )
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
        unfinished_when_killed: list[int] = []

        def kill_one_worker_once_work_is_under_way() -> None:
            deadline = time.monotonic() + 120
            flags = np.zeros(0)
            while time.monotonic() < deadline:
                try:
                    flags = zarr.open_group(str(store), mode="r")["done"][:]
                    if flags.sum() >= 2:
                        break
                except Exception:
                    pass
                time.sleep(0.02)
            pid = next(iter(pids.values()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            unfinished_when_killed.append(int(flags.size - flags.sum()))

        killer = threading.Thread(target=kill_one_worker_once_work_is_under_way)
        killer.start()
        report = predict(files["scene"], out, files["model"], scheduler=c.scheduler_address, **OPTIONS)
        killer.join()
    assert killed, "no worker was killed"
    assert unfinished_when_killed[0] > 0, "the run had finished before the worker was killed"
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


def test_slides_and_zarr_inputs_travel_to_the_workers(files, cluster) -> None:
    """The readers are pickled into the graph and reopen their files on the workers: a TIFF slide read at a
    resampled pixel size, and a Zarr array, give the threads' output."""
    import tifffile

    image = random_image((3, 320, 400), seed=31)
    slide = files["folder"] / "slide.tif"
    tifffile.imwrite(slide, np.moveaxis(image, 0, 2), photometric="rgb", resolution=(40000, 40000), resolutionunit=3)
    array = files["folder"] / "image.zarr"
    zarr.create_array(str(array), data=image, chunks=(3, 100, 100))
    for source, extra in ((slide, {"mpp": 0.4}), (array, {})):
        threads = files["folder"] / f"threads-{source.stem}.zarr"
        workers = files["folder"] / f"workers-{source.stem}.zarr"
        predict(source, threads, files["model"], **OPTIONS, **extra)
        predict(source, workers, files["model"], scheduler=cluster.scheduler_address, **OPTIONS, **extra)
        np.testing.assert_allclose(_probs(workers), _probs(threads), atol=1e-5, rtol=0, err_msg=source.name)


def test_a_masked_run_interrupted_on_threads_resumes_on_the_cluster(files, cluster, tmp_path: Path) -> None:
    from pipeline import load_checkpoint

    mask = write_geotiff(tmp_path / "mask.tif", (random_image((1, 320, 400), seed=5) > 128).astype(np.uint8))
    options = {**OPTIONS, "mask": str(mask)}
    reference = tmp_path / "ref.zarr"
    predict(files["scene"], reference, files["model"], **options)
    checkpoint = load_checkpoint(files["model"])
    calls = {"n": 0}

    def stop(_module, _inputs, _output):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt

    handle = checkpoint.model.register_forward_hook(stop)
    out = tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        predict(files["scene"], out, checkpoint, workers=1, batch_size=1, **options)
    handle.remove()
    flags = zarr.open_group(str(out) + ".partial", mode="r")["done"][:]
    assert 0 < flags.sum() < flags.size
    # The interrupted run held its model in memory; the resume names the same checkpoint file, so the run
    # record's model (its weights' checksum) is compared, not the object.
    report = predict(files["scene"], out, files["model"], scheduler=cluster.scheduler_address, resume=True, **options)
    assert report.resumed and report.chunks_computed == flags.size - flags.sum()
    np.testing.assert_allclose(_probs(out), _probs(reference), atol=1e-5, rtol=0)
