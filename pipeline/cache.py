"""The models a process has loaded: one runner per ``ModelSpec``, shared by the process's threads.

Dask tasks never carry the model. They carry a small ``ModelSpec``; ``model_cache().runner(spec)`` loads the
checkpoint the first time a process needs it, and every later task of the process gets the same runner.
"""

from __future__ import annotations

import threading

from .devices import process_device
from .runner import ModelRunner, ModelSpec


class ModelCache:
    """This process's runners by spec, and how many checkpoints it has loaded from files (``loads``: a cluster
    test checks that each worker loads its model once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runners: dict[ModelSpec, ModelRunner] = {}
        self.loads = 0

    def runner(self, spec: ModelSpec) -> ModelRunner:
        """The runner for ``spec``, loading the checkpoint on first use."""
        with self._lock:
            runner = self._runners.get(spec)
            if runner is None:
                runner = self._runners[spec] = ModelRunner(spec)
                if spec.held is None:
                    self.loads += 1
            return runner

    def is_idle(self, spec: ModelSpec) -> bool:
        """Whether the runner for ``spec`` has no tiles waiting for its forward pool (a runner on a GPU has no
        pool: False)."""
        with self._lock:
            runner = self._runners.get(spec)
        if runner is None:  # not loaded yet, so nothing is queued; a GPU runs its tiles in the caller
            return process_device(spec.device) == "cpu"
        return runner.idle

    def batch_size(self, spec: ModelSpec) -> int | None:
        """The batch size the runner for ``spec`` runs (None: not loaded, or no tile run yet)."""
        with self._lock:
            runner = self._runners.get(spec)
        return None if runner is None or not runner.tiles_run else runner.sizer.in_use

    def backend_name(self, spec: ModelSpec) -> str | None:
        """The engine the runner for ``spec`` runs (None: not loaded, or no tile run yet)."""
        with self._lock:
            runner = self._runners.get(spec)
        return None if runner is None else runner.backend_name

    def release(self) -> None:
        """Close and forget every runner (frees their models; the next run loads again). ``loads`` keeps
        counting."""
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.close()


_CACHE = ModelCache()


def model_cache() -> ModelCache:
    """This process's ``ModelCache``."""
    return _CACHE


def chosen_batch_size(spec: ModelSpec) -> int | None:
    """The batch size this process's runner for ``spec`` chose (what a cluster worker reports back)."""
    return _CACHE.batch_size(spec)


def chosen_backend(spec: ModelSpec) -> str | None:
    """The engine this process's runner for ``spec`` runs (what a cluster worker reports back)."""
    return _CACHE.backend_name(spec)
