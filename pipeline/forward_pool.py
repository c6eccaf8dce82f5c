"""The threads that run a process's forward passes on a CPU, shared by every chunk task of the process.

A chunk task that ran its own tiles would leave a core idle whenever its chunk waited for a neighbour, and at
the end of a run, when one thread is left with the last chunk. Here a chunk task hands its tiles over as a
``TileRequest`` and takes the probabilities back in order, and every thread of the pool takes the next batch of
the request with the lowest priority number that still has tiles.

Kept free of torch: the pool runs whatever ``run_batch`` it is given.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tiling.normalize import Normalization

Origin = tuple[int, int]
#: What a pool thread hands back for a batch: its probabilities, or the error that stopped it.
Outcome = np.ndarray | BaseException


class ForwardPoolStopped(RuntimeError):
    """The pool was stopped (a run failed) before it ran every tile of a request."""


@dataclass(eq=False)
class TileRequest:
    """One caller's tiles: raw pixels (bands, rows, cols), what to keep, and where each tile starts."""

    image: np.ndarray
    valid: np.ndarray | None
    origins: Sequence[Origin]
    tile: int
    normalization: Normalization
    #: Lower runs first (a chunk's position in the run's order); equal priorities run in the order they came.
    priority: int = 0
    #: Tiles handed to the pool's threads so far, and batches made of them.
    taken: int = 0
    batches: int = 0
    #: Batches a pool thread has taken and not yet handed back.
    running: int = 0
    #: (batch number, origins, probabilities or the error that stopped the batch), in the order they finish.
    results: queue.SimpleQueue[tuple[int, list[Origin], Outcome]] = field(default_factory=queue.SimpleQueue)

    def take(self, size: int) -> tuple[int, list[Origin]]:
        """The next batch of at most ``size`` tiles and its number."""
        origins = list(self.origins[self.taken : self.taken + size])
        self.taken += len(origins)
        self.batches += 1
        return self.batches - 1, origins

    @property
    def exhausted(self) -> bool:
        return self.taken >= len(self.origins)


class ForwardPool:
    """Threads that run the forward passes of every caller in the process, most urgent request first.

    Chunk tasks pass their position in the run's row-major order as the priority, so chunks finish in that order
    whatever order a scheduler starts them in: the neighbours a chunk's blend waits for are done first, and the
    throttle lets the next chunk start (and queue its tiles) while the pool is still busy. ``threads`` pool
    threads are at work at a time; the pool grows when asked for more and parks the threads it does not need.

    A caller that leaves before its tiles are done (it failed) gives up the tiles not yet taken and waits for the
    batches of its request that threads are running, so no thread works for a caller that has gone. ``stop``
    ends the threads (a failed run: see ``devices.cpu_threads``); the next request starts new ones.
    """

    def __init__(
        self, batch_size: Callable[[], int], run_batch: Callable[[TileRequest, list[Origin]], np.ndarray]
    ) -> None:
        self._batch_size = batch_size
        self._run_batch = run_batch
        self._requests: list[TileRequest] = []  # by priority, then arrival
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        #: Threads of an older generation end (a stopped pool's threads end once their batch is done).
        self._generation = 0
        self._active = 0
        self._closed = False
        _POOLS.add(self)

    def _forget_threads(self) -> None:
        """In a child forked from this process: none of the parent's threads is there (and one of them may have
        held the lock), so the child starts with no threads, no requests and a new lock; its first request starts
        new threads. Without this a forked child's first run waits forever for threads that do not exist."""
        self._changed = threading.Condition()
        self._threads, self._requests = [], []
        self._generation += 1
        self._active = 0

    def run(self, request: TileRequest, threads: int) -> Iterator[tuple[list[Origin], np.ndarray]]:
        """Run ``request`` on ``threads`` pool threads; yields (origins, probabilities) batch by batch."""
        with self.queued(request, threads) as results:
            yield from results

    @contextlib.contextmanager
    def queued(self, request: TileRequest, threads: int) -> Iterator[Iterator[tuple[list[Origin], np.ndarray]]]:
        """Queue ``request`` now, on ``threads`` pool threads; the value is an iterator over its (origins,
        probabilities) batch by batch. Leaving the block gives up the tiles not yet taken (a failed caller) and
        waits for the batches already taken."""
        if not request.origins:
            yield iter(())
            return
        with self._changed:
            if self._closed:
                raise RuntimeError("the forward pool is closed")
            self._active = threads
            while len(self._threads) < threads:
                thread = threading.Thread(
                    target=self._work,
                    args=(len(self._threads), self._generation),
                    name="tilewise-forward",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            bisect.insort(self._requests, request, key=lambda r: r.priority)  # after the equal ones
            self._changed.notify_all()
        try:
            yield self._results(request)
        finally:
            with self._changed:
                if request in self._requests:
                    self._requests.remove(request)
                while request.running:
                    self._changed.wait()

    @property
    def idle(self) -> bool:
        """No queued tile is waiting for a thread (the threads may still be finishing their last batches)."""
        with self._changed:
            return not self._requests

    @property
    def threads(self) -> list[threading.Thread]:
        """The pool's current threads (a stopped or closed pool's are joined and no longer listed)."""
        with self._changed:
            return list(self._threads)

    @staticmethod
    def _results(request: TileRequest) -> Iterator[tuple[list[Origin], np.ndarray]]:
        finished: dict[int, tuple[list[Origin], np.ndarray]] = {}
        yielded = returned = 0
        while returned < len(request.origins):
            number, origins, outcome = request.results.get()
            if isinstance(outcome, BaseException):
                raise outcome
            finished[number] = origins, outcome
            while yielded in finished:  # in batch order, so the sums do not depend on thread timing
                origins, probs = finished.pop(yielded)
                yielded += 1
                returned += len(origins)
                yield origins, probs

    def stop(self) -> None:
        """Give up every queued tile (their callers raise ``ForwardPoolStopped``), let the threads finish the
        batch each holds, and join them. The pool stays usable: the next request starts new threads."""
        with self._changed:
            abandoned, self._requests = self._requests, []
            threads, self._threads = self._threads, []
            self._generation += 1
            self._changed.notify_all()
        for request in abandoned:
            request.results.put((-1, [], ForwardPoolStopped("the forward pool was stopped: the run failed")))
        for thread in threads:
            thread.join()

    def close(self) -> None:
        """Refuse later requests, let the threads finish the queued ones and end (they hold the model), and join
        them."""
        with self._changed:
            self._closed = True
            threads, self._threads = self._threads, []
            self._changed.notify_all()
        for thread in threads:
            thread.join()

    def _work(self, index: int, generation: int) -> None:
        while True:
            with self._changed:
                while index >= self._active or not self._requests or generation != self._generation:
                    if self._closed or generation != self._generation:
                        return
                    self._changed.wait()
                request = self._requests[0]
                number, origins = request.take(self._batch_size())
                request.running += 1
                if request.exhausted:
                    self._requests.pop(0)
            try:
                outcome: Outcome = self._run_batch(request, origins)
            except BaseException as error:  # handed to the caller, which raises it
                outcome = error
            request.results.put((number, origins, outcome))
            with self._changed:
                request.running -= 1
                if not request.running and request not in self._requests:
                    self._changed.notify_all()  # its caller may be waiting to leave


#: Every pool of the process, reset in a forked child (``multiprocessing``'s default on Linux, pytest-forked, …).
_POOLS: weakref.WeakSet[ForwardPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_threads()


os.register_at_fork(after_in_child=_after_fork_in_child)
