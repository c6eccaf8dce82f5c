"""Devices and threads: which device a model runs on, and how a process shares its CPU cores.

``auto`` is decided in one place, ``auto_device``: by the process that checks the options when the model runs
there, by each cluster worker for itself otherwise. On a CPU a process runs several forward passes side by side
(``ForwardThreads``), each on its share of the cores, which beats one forward pass spread over all cores for
convolutions of tile size.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import weakref
from collections.abc import Iterator

import torch

from tiling.errors import OptionError

from .forward_pool import ForwardPool
from .options import PRECISION_NAMES

PRECISIONS = dict(zip(PRECISION_NAMES, (None, torch.bfloat16, torch.float16), strict=True))


def auto_device() -> str:
    """What ``auto`` means in this process: its first GPU when one is visible, else the CPU."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str, here: bool = True) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda``/``cuda:N`` must exist.

    With ``here=False`` (the model runs on cluster workers, not in this process) the name is only checked for
    syntax: ``auto`` stays ``auto`` and each worker resolves it for itself (``process_device``).
    """
    name = name.strip().lower()
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name not in ("auto", "cpu") and match is None:
        raise OptionError(f"unknown device {name!r} (expected auto, cpu, cuda or cuda:N)")
    if not here:
        return f"cuda:{int(match.group(1) or 0)}" if match else name
    if name == "auto":
        return auto_device()
    if name == "cpu":
        return "cpu"
    assert match is not None
    if not torch.cuda.is_available():
        raise OptionError(f"device {name!r} requested but no CUDA GPU is available (use --device cpu)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise OptionError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return f"cuda:{index}"


def process_device(device: str) -> str:
    """The device a model runs on in this process: a resolved device as it is, ``auto`` decided here."""
    return auto_device() if device == "auto" else device


def check_precision(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r} (expected fp32, bf16 or fp16)")
    if precision == "fp16" and device == "cpu":
        raise OptionError("fp16 autocast is for GPUs; on the CPU use --precision bf16 or fp32")


#: CPU features with which torch (oneDNN) multiplies bf16 natively; without them bf16 is emulated, slower than
#: float32. The names are /proc/cpuinfo's (and torch.cpu.get_capabilities()'s, where torch has it).
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16): where bf16 autocast costs less than
    float32."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # recent torch; older: /proc/cpuinfo
    if capabilities is not None:
        found = capabilities()
        return any(bool(found.get(name)) for name in NATIVE_BF16_FEATURES)
    return bool(set(NATIVE_BF16_FEATURES) & _cpuinfo_flags())


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The first CPU's feature flags in /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity under SLURM, taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_torch_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class ForwardThreads:
    """The forward passes this process runs side by side on a CPU, and the pools whose threads run them.

    ``count`` is how many pool threads are at work at a time (one per chunk task a worker runs at once). The
    pools are listed so that a failed run can end their threads (``cpu_threads``); a pool that is no longer
    used drops out of the list by itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 1
        self._pools: weakref.WeakSet[ForwardPool] = weakref.WeakSet()

    @property
    def count(self) -> int:
        return self._count

    def set(self, count: int) -> None:
        self._count = max(1, count)

    def attach(self, pool: ForwardPool) -> None:
        """List ``pool`` as one that runs this process's forward passes."""
        with self._lock:
            self._pools.add(pool)

    def stop_pools(self) -> None:
        """Stop every listed pool: queued tiles are given up, and the threads end once their batch is done and
        are joined (the pools start new threads when next asked)."""
        with self._lock:
            pools = list(self._pools)
        for pool in pools:
            pool.stop()


_FORWARD_THREADS = ForwardThreads()


def process_forward_threads() -> ForwardThreads:
    """This process's ``ForwardThreads``."""
    return _FORWARD_THREADS


@contextlib.contextmanager
def cpu_threads(workers: int) -> Iterator[None]:
    """Run ``workers`` forward passes side by side for a run, each on an equal share of the CPU cores.

    A run that fails (an error in any of its tasks, or an interrupt) stops the forward pools before the error
    goes on: their threads finish the batch they hold, end, and are joined, so none is left running the model
    when the interpreter exits.
    """
    forward = process_forward_threads()
    previous = torch.get_num_threads(), forward.count
    set_torch_threads(max(1, available_cores() // workers))
    forward.set(workers)
    try:
        yield
    except BaseException:
        forward.stop_pools()
        raise
    finally:
        set_torch_threads(previous[0])
        forward.set(previous[1])
