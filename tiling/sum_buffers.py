"""Zeroed float32 arrays for a chunk's sums, each in an anonymous memory mapping of its own, reused while a run
lasts and handed back to the OS when it ends.

A chunk's sums (``Σ w·p`` over its extent) are the largest arrays of a run and live for a chunk's whole life.
Taken from the C allocator's heaps, which a run keeps large so forward passes reuse their memory, they left
holes that the next chunks and forward passes did not fit, and the heaps grew with the number of chunks. A
mapping of its own leaves nothing behind when it is unmapped.

A fresh mapping costs the kernel a page fault and a zeroed page per 4 KiB, more CPU time than the sums' own
arithmetic. So a mapping whose array is freed goes back to a small pool, and the next array of the same size
(the next chunk's) takes it and zeroes it in user space; ``release`` unmaps what the pool holds (the end of a
run, or a heap trim). A fresh mapping is private and populated in one system call (``MAP_POPULATE``), which
costs half of faulting in a shared one page by page.
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref

import numpy as np

#: Arrays from this size on get their own mapping.
OWN_MAPPING_BYTES = 4 * 2**20
#: Free mappings the pool keeps for reuse, at most, and their bytes at most (the oldest goes first).
KEPT_MAPPINGS = 4
KEPT_BYTES = 512 * 2**20
#: How much larger than an array a reused mapping may be (chunks along the raster's edges have no overhang on
#: one side: their sums are a little smaller).
SPARE_SHARE = 0.25
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)


class SumBuffers:
    """A pool of free anonymous mappings, by size."""

    def __init__(self, kept: int = KEPT_MAPPINGS, kept_bytes: int = KEPT_BYTES) -> None:
        self.kept, self.kept_bytes = kept, kept_bytes
        self._free: list[mmap.mmap] = []
        # Re-entrant: a garbage collection inside the pool's own code may free an array, whose finalizer gives
        # its mapping back on the same thread.
        self._lock = threading.RLock()
        #: Mappings made and mappings reused (for tests and benchmarks).
        self.made = 0
        self.reused = 0

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """A zeroed float32 array of ``shape``: from the heap when small, else in a mapping of its own."""
        count = math.prod(shape)
        nbytes = 4 * count
        if nbytes < OWN_MAPPING_BYTES:
            return np.zeros(shape, np.float32)
        mapping = self._take(nbytes)
        if mapping is None:
            mapping = mmap.mmap(-1, nbytes, flags=_FLAGS)
            self.made += 1
            flat = np.frombuffer(mapping, np.float32)
        else:
            self.reused += 1
            flat = np.frombuffer(mapping, np.float32, count)
            flat.fill(0)
        # ``flat`` owns the memory: views of the array handed out keep it alive, so its mapping returns to the
        # pool only once nothing refers to any of them.
        weakref.finalize(flat, self._give_back, mapping)
        return flat.reshape(shape)

    def release(self) -> None:
        """Unmap every free mapping the pool holds (a mapping is unmapped when its last reference goes)."""
        with self._lock:
            self._free = []

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(len(m) for m in self._free)

    def _take(self, nbytes: int) -> mmap.mmap | None:
        """The smallest free mapping that holds ``nbytes`` without wasting more than ``SPARE_SHARE`` of it."""
        with self._lock:
            fits = [m for m in self._free if nbytes <= len(m) <= nbytes * (1 + SPARE_SHARE)]
            if not fits:
                return None
            best = min(fits, key=len)
            if best not in self._free:  # dropped meanwhile by a give-back on this thread
                return None
            self._free.remove(best)
            return best

    def _give_back(self, mapping: mmap.mmap) -> None:
        # Called while the array that held ``mapping`` is being freed: its buffer may still be exported, so an
        # old mapping is dropped (unmapped with its last reference), never closed here.
        with self._lock:
            self._free.append(mapping)
            while self._free and (len(self._free) > self.kept or sum(map(len, self._free)) > self.kept_bytes):
                del self._free[0]


#: The process's pool (every run of the process shares it; a run empties it when it ends).
SUM_BUFFERS = SumBuffers()


def zeros_outside_heap(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed float32 array of ``shape`` for chunk sums (``SumBuffers.zeros`` of the process's pool)."""
    return SUM_BUFFERS.zeros(shape)
