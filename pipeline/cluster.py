"""Running the graph on a Dask ``distributed`` cluster: an existing scheduler or a local cluster of processes.

Workers read the input and write finished chunks into the work store themselves; the client sends a small graph
(readers and models travel as descriptions) and gets back tile statistics only. Each worker process loads the
model once (``cache.model_cache`` keeps it per process). Model tasks ask for ``resources={"GPU": 1}`` when the
run is on CUDA, so a mixed cluster runs them only on GPU workers; a cluster without any is refused up front.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiling.errors import OptionError, TilewiseError

#: Environment of local worker processes: GDAL's block cache (read when GDAL is first used).
WORKER_ENV = {"GDAL_CACHEMAX": "64"}
#: glibc reads its variables when the process starts, so these go in before the nanny spawns a worker: two
#: allocator arenas instead of eight per core, and not Dask's MALLOC_TRIM_THRESHOLD_=65536, which turns off
#: glibc's adaptive mmap threshold (every activation of a CPU forward pass a fresh mmap: a 256² U-Net forward
#: took 0.18 s instead of 0.11 s). The model tasks also set the thresholds themselves (``keep_freed_memory``).
PRE_SPAWN_ENV: dict[str, str | None] = {"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": None}


@dataclass(frozen=True)
class SchedulerChoice:
    """``threads`` (local threads), ``address`` (tcp://HOST:PORT of a running scheduler) or ``local`` workers."""

    kind: str
    address: str | None = None
    local_workers: int = 0

    @classmethod
    def parse(cls, scheduler: str | None, cluster: str | None) -> SchedulerChoice:
        if scheduler and cluster:
            raise OptionError("give either --scheduler or --cluster, not both")
        if cluster:
            match = re.fullmatch(r"local:(\d+)", cluster.strip())
            if not match or int(match.group(1)) < 1:
                raise OptionError(f"unknown cluster {cluster!r} (expected local:N, N worker processes)")
            return cls("local", local_workers=int(match.group(1)))
        if scheduler in (None, "threads"):
            return cls("threads")
        if re.fullmatch(r"(tcp|tls|ws|wss|inproc)://\S+", scheduler):
            return cls("address", address=scheduler)
        raise OptionError(f"unknown scheduler {scheduler!r} (expected threads or tcp://HOST:PORT)")

    @property
    def distributed(self) -> bool:
        return self.kind != "threads"


def _torch_threads_plugin(threads_per_host: dict[str, int]) -> Any:
    """A worker plugin giving each worker thread's forward passes an equal share of its host's cores (a worker's
    forward pool runs as many forwards side by side as it has threads).

    Dask's nanny pins workers to one OpenMP thread (``OMP_NUM_THREADS=1``), which leaves cores idle on a host
    with fewer worker threads than cores, while a worker started without a nanny takes every core and
    oversubscribes a host running several. ``threads_per_host`` counts the Dask worker threads on each host when
    the run starts.
    """
    from distributed import WorkerPlugin
    from distributed.comm import get_address_host

    class TorchThreads(WorkerPlugin):
        name = "tilewise-torch-threads"

        def setup(self, worker: Any) -> None:
            from .devices import available_cores, process_forward_threads, set_torch_threads

            sharing = threads_per_host.get(get_address_host(worker.address), worker.state.nthreads)
            set_torch_threads(max(1, available_cores() // max(1, sharing)))
            process_forward_threads().set(worker.state.nthreads)

    return TorchThreads()


def share_storage_settings(client: Any) -> None:
    """Give every worker this process's object-storage settings: GDAL's (per process, read from the environment)
    and the S3 endpoint, each unless the worker's environment sets it. Credentials are not sent: each worker
    finds its own (environment, profile files, an instance role)."""
    from distributed import WorkerPlugin

    from tiling.storage import StorageSettings

    class StorageSettingsPlugin(WorkerPlugin):
        name = "tilewise-storage-settings"

        def __init__(self, settings: StorageSettings) -> None:
            self.settings = settings

        def setup(self, worker: Any) -> None:
            self.settings.apply()

    client.register_plugin(StorageSettingsPlugin(StorageSettings.from_environment()))


def share_cores(client: Any) -> None:
    """Register the torch-threads plugin for the cluster's current workers (replacing an earlier one)."""
    from distributed.comm import get_address_host

    per_host: dict[str, int] = {}
    for address, nthreads in client.nthreads().items():
        host = get_address_host(address)
        per_host[host] = per_host.get(host, 0) + nthreads
    client.register_plugin(_torch_threads_plugin(per_host))


@contextlib.contextmanager
def connect(choice: SchedulerChoice) -> Iterator[Any]:
    """A ``distributed.Client`` for ``choice`` (closed, and a local cluster shut down, on exit)."""
    from distributed import Client

    if choice.kind == "address":
        try:
            client = Client(choice.address, timeout="20s")
        except OSError as exc:
            raise TilewiseError(f"cannot reach the Dask scheduler at {choice.address}: {exc}") from None
        with client:
            share_cores(client)
            share_storage_settings(client)
            yield client
        return
    with local_cluster(choice.local_workers) as cluster, Client(cluster) as client:
        share_cores(client)
        share_storage_settings(client)
        yield client


def local_cluster(workers: int) -> Any:
    """A ``LocalCluster`` of ``workers`` single-threaded worker processes set up for tilewise (``--cluster``).

    Its processes log only critical records (their stderr is the terminal's): a failed task reaches the user as
    the run's one error line, not as the workers' "Compute Failed" reports; ``--debug`` lets them through."""
    import dask
    from distributed import LocalCluster

    pre_spawn = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in PRE_SPAWN_ENV.items()}
    # A nanny copies its variables into this process's environment for good, and workers (restarted ones too)
    # inherit it: one started earlier with Dask's defaults would hand them down anyway.
    for name, value in PRE_SPAWN_ENV.items():
        if value is None:
            os.environ.pop(name, None)
    with dask.config.set(pre_spawn):  # read by the nannies as they start, in this process
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env=WORKER_ENV,
            silence_logs=logging.WARNING if logging.getLogger().isEnabledFor(logging.INFO) else logging.CRITICAL,
        )


def check_gpu_workers(client: Any) -> None:
    """Refuse a CUDA run on a cluster with no worker offering the GPU resource (it would wait forever)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        raise OptionError(
            f"the run needs GPU workers but none of the cluster's {len(workers)} worker(s) offers the GPU resource "
            "(start GPU workers with: dask worker SCHEDULER --nthreads 1 --resources GPU=1)"
        )


def total_threads(client: Any) -> int:
    return max(1, sum(client.nthreads().values()))


def run_graph(
    client: Any,
    dsk: dict[Any, Any],
    model_keys: set[Any],
    final_key: Any,
    gpu: bool,
    progress: bool,
    report: Path | None,
) -> Any:
    """Compute ``final_key`` on the cluster; model tasks carry the GPU resource when ``gpu``."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
    from distributed import performance_report
    from distributed import progress as show_progress

    if gpu:
        check_gpu_workers(client)
    model_layer = {k: v for k, v in dsk.items() if k in model_keys}
    rest = {k: v for k, v in dsk.items() if k not in model_keys}
    annotations = {"resources": {"GPU": 1}} if gpu else None
    graph = HighLevelGraph(
        {
            "tilewise-model": MaterializedLayer(model_layer, annotations=annotations),
            "tilewise-rest": MaterializedLayer(rest),
        },
        {"tilewise-model": set(), "tilewise-rest": {"tilewise-model"}},
    )
    with performance_report(filename=str(report)) if report else contextlib.nullcontext():
        future = client.get(graph, final_key, sync=False)
        if progress:
            show_progress(future)
        return future.result()
