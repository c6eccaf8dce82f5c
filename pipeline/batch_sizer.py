"""Choosing a run's batch size by timing real batches of the run."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

#: Batch sizes tried when the batch size is left to tilewise.
CANDIDATE_BATCHES = (1, 2, 4, 8, 16, 32, 64)


class BatchSizer:
    """Finds the batch size that is fastest *per tile* by timing real batches of the run.

    The largest batch that fits is often not the fastest (on a CPU, batch 1 is often as fast per tile as batch
    4). Candidates are compared in pairs, smallest first: the best so far against the next one, their batches
    interleaved so both are timed under the same load (a shared machine's speed can drift by several per cent
    within seconds, enough to make a candidate timed a few seconds later look clearly faster). Each gets ``SAMPLES``
    timed batches and is scored by the median time per tile. A thread's first batch of a size is not timed: it
    pays one-off set-up costs and faults in the memory of that size's activations. Exploration stops at the
    first candidate clearly slower than the best so far. The batches are real tiles of the run, so no tile runs
    twice. A larger batch must beat a smaller one by ``MARGIN`` to be chosen: it costs memory, and on a CPU its
    activations are faulted in again whenever the heaps hand freed memory back, so a batch that is a little
    faster on its own can be no faster in a run.
    """

    SAMPLES = 4
    MARGIN = 0.10
    #: A challenger this much slower than the best ends the search (larger batches will not do better).
    CLEARLY_SLOWER = 1.1

    def __init__(self, candidates: Sequence[int]) -> None:
        self.candidates = sorted(set(candidates))
        self.chosen: int | None = self.candidates[0] if len(self.candidates) == 1 else None
        self._best = self.candidates[0]
        self._challenger = 1  # index in ``candidates``
        self._per_tile: dict[int, list[float]] = {}
        self._warmed: set[tuple[int, int]] = set()

    @property
    def in_use(self) -> int:
        """The chosen size, or while still choosing the best so far."""
        return self.chosen if self.chosen is not None else self._best

    def next_size(self) -> int:
        if self.chosen is not None:
            return self.chosen
        pair = (self._best, self.candidates[self._challenger])
        return min(pair, key=lambda size: len(self._per_tile.get(size, ())))  # alternate; a tie goes to the best

    def record(self, size: int, seconds: float, thread: int | None = None) -> None:
        """Time one batch of ``size`` tiles run by ``thread`` (default: the calling thread)."""
        if self.chosen is not None:
            return
        warm_up = (threading.get_ident() if thread is None else thread, size)
        if warm_up not in self._warmed:
            self._warmed.add(warm_up)
            return
        challenger = self.candidates[self._challenger]
        if size not in (self._best, challenger):
            return  # a short batch at the end of a chunk, or a batch started before the last switch
        self._per_tile.setdefault(size, []).append(seconds / size)
        if min(len(self._per_tile.get(c, ())) for c in (self._best, challenger)) < self.SAMPLES:
            return
        best, other = (float(np.median(self._per_tile[c])) for c in (self._best, challenger))
        if other < best * (1 - self.MARGIN):
            self._best = challenger
        if other > self.CLEARLY_SLOWER * best or self._challenger == len(self.candidates) - 1:
            self.chosen = self._best
            return
        self._challenger += 1
        self._per_tile = {}  # the next pair is timed afresh, side by side
