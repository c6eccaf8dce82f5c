"""Training batches as a ``torch.utils.data`` dataset, read through a ``DataLoader``.

Item ``i`` of ``TrainingBatches`` is the whole batch of step ``i mod steps_per_epoch`` of epoch
``i div steps_per_epoch + 1``, drawn from a numpy generator seeded by (seed, epoch, step): tile origins from
the lazy ``TileSampler``, windows read through the project's readers, then augmented with a torch generator
seeded from the same numpy generator. An item is a function of (seed, epoch, step) alone, so which worker
builds it, and how many workers there are, cannot change a run; a resumed run starts the loader at its first
unfinished step.

The loader's workers are started by a fork server (``forkserver``), a fresh interpreter started for the
purpose that has opened nothing: GDAL must not be used across a fork of the training process, and the readers
pickle as their paths and reopen their files in the worker, so a worker needs nothing from the training
process but the dataset. ``spawn`` would start the workers no faster (neither a spawned worker nor the fork
server has torch or the readers imported), and a spawned worker stopped with batches still queued (an
interrupted run) exits through the interpreter's shutdown, where it was seen to abort now and then; the loader
then raises in the training process. A fork server's child leaves with ``os._exit``. Being the fork server's
child, a worker watches the training process itself (torch's own check watches the worker's parent) and exits
if it dies. Like any start but ``fork``, this imports the caller's main script in each worker: a script that
calls ``train`` with workers needs the ``if __name__ == "__main__":`` guard.

One iterator serves the whole run, so the workers start once per run and keep building the next epoch's
batches while the current one is validated. Each worker runs torch on one thread. A batch crosses as numpy
arrays pickled through the loader's pipe, with the worker's CPU time so far, so that a run's CPU time can
count its workers' (they are not the training process's children); the training process makes tensors of them
without a copy (pinned ones, in the loader's pinning thread, for a CUDA device).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from tiling.errors import TilewiseError
from tiling.normalize import Normalization

from .augment import Augmentation
from .data import Pair, TileSampler
from .windows import PaddedTile, TrainingTile

#: Batches each worker builds ahead of the training step.
PREFETCH_PER_WORKER = 2
#: How loader workers are started (see the module's docstring).
WORKER_START = "forkserver"

#: Images, labels and (with a weight map) each pixel's separation weight.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class BatchSpec:
    """What fixes the batches of a run (everything here is in the resume fingerprint)."""

    seed: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    tile: int


@dataclass(frozen=True)
class BatchArrays:
    """A batch as the loader hands it over: images (B, C, T, T) float32, labels (B, T, T) int64 and separation
    weights (B, T, T) float32 or None."""

    images: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    worker: int | None = None  # the loader worker that built it (None: the training process)
    worker_cpu_seconds: float = 0.0  # that worker's CPU time when it handed the batch over
    pinned: Batch | None = None  # the arrays as pinned tensors, once the loader has pinned them

    def tensors(self) -> Batch:
        if self.pinned is not None:
            return self.pinned
        weights = None if self.weights is None else torch.from_numpy(self.weights)
        return torch.from_numpy(self.images), torch.from_numpy(self.labels), weights

    def pin_memory(self) -> BatchArrays:
        """Called by the loader's pinning thread (CUDA devices)."""
        images, labels, weights = self.tensors()
        pinned = (images.pin_memory(), labels.pin_memory(), None if weights is None else weights.pin_memory())
        return replace(self, pinned=pinned)


class TrainingBatches(Dataset[BatchArrays | TilewiseError]):
    """Every batch of a run, by its number over all epochs; picklable (the readers reopen their files).

    A ``TilewiseError`` met while building a batch is returned rather than raised, so that a worker hands it
    back whole (the training process raises it: the user sees the same one-line error with or without workers).
    """

    def __init__(
        self,
        spec: BatchSpec,
        pairs: Sequence[Pair],
        sampler: TileSampler,
        normalization: Normalization,
        augment: Augmentation,
        window: TrainingTile | None = None,
    ) -> None:
        self.spec = spec
        self.pairs = pairs
        self.sampler = sampler
        self.normalization = normalization
        self.augment = augment
        #: What a tile reads (a valid model: its context, mirrored) and where its loss is taken.
        self.window = window or PaddedTile(spec.tile)

    def __len__(self) -> int:
        return self.spec.epochs * self.spec.steps_per_epoch

    def __getitem__(self, index: int) -> BatchArrays | TilewiseError:
        epoch, step = divmod(index, self.spec.steps_per_epoch)
        try:
            images, labels, weights = self.batch(epoch + 1, step)
        except TilewiseError as exc:
            return exc
        arrays = BatchArrays(images.numpy(), labels.numpy(), None if weights is None else weights.numpy())
        worker = get_worker_info()
        if worker is None:
            return arrays
        return replace(arrays, worker=worker.id, worker_cpu_seconds=time.process_time())

    def batch(self, epoch: int, step: int) -> Batch:
        """The batch of ``step`` (0-based) in ``epoch`` (1-based): whole input windows, augmented together with
        their labels and weights, which are then cropped to the network's output."""
        rng = np.random.default_rng([self.spec.seed, epoch, step])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        images, labels, weights = [], [], []
        for _ in range(self.spec.batch_size):
            index, row, col = self.sampler.sample(rng)
            raw, valid, label, weight = self.window.read(self.pairs[index], row, col)
            images.append(self.normalization.apply(raw, valid))
            labels.append(label)
            weights.append(weight)
        stacked = None if weights[0] is None else torch.from_numpy(np.stack(weights))
        x, y, w = self.augment(
            torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)), generator, stacked
        )
        crop = self.window.crop
        return x, crop(y).contiguous(), None if w is None else crop(w).contiguous()


class BatchStream:
    """The loader's batches as tensors, in order; a batch whose building failed raises its error here."""

    def __init__(self, items: Iterator[BatchArrays | TilewiseError]) -> None:
        self._items = items
        self._worker_cpu: dict[int, float] = {}

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        item = next(self._items)
        if isinstance(item, TilewiseError):
            raise item
        if item.worker is not None:
            self._worker_cpu[item.worker] = item.worker_cpu_seconds
        return item.tensors()

    @property
    def worker_cpu_seconds(self) -> float:
        """CPU time the workers had used by the last batch each handed over (start-up included)."""
        return sum(self._worker_cpu.values())


@contextmanager
def loading(batches: TrainingBatches, first_epoch: int, workers: int, device: str) -> Iterator[BatchStream]:
    """The run's batches from epoch ``first_epoch`` on, in order, built by ``workers`` processes (0: in the
    caller); pinned in memory for a CUDA device. The workers stop when the block ends, however it ends."""
    first = (first_epoch - 1) * batches.spec.steps_per_epoch
    loader = DataLoader(
        batches,
        batch_size=None,  # an item is already a batch
        collate_fn=_as_is,  # and stays numpy until it reaches the training process
        sampler=range(first, len(batches)),
        num_workers=workers,
        prefetch_factor=PREFETCH_PER_WORKER if workers else None,
        pin_memory=device.startswith("cuda"),
        multiprocessing_context=multiprocessing.get_context(WORKER_START) if workers else None,
        worker_init_fn=_start_worker if workers else None,
        # the items draw from their own generators; this one only keeps the loader off torch's global RNG
        generator=torch.Generator().manual_seed(batches.spec.seed),
    )
    items = iter(loader)
    try:
        yield BatchStream(items)
    finally:
        if isinstance(items, _MultiProcessingDataLoaderIter):
            # torch stops an iterator's workers when it is exhausted or collected, and has no public call to stop
            # them sooner; a traceback that holds a frame holding the iterator would keep them running
            items._shutdown_workers()


def _as_is(item: BatchArrays | TilewiseError) -> BatchArrays | TilewiseError:
    return item


def _start_worker(worker: int) -> None:
    """Worker set-up: leave when the training process is gone."""
    training = multiprocessing.parent_process()
    if training is None:
        raise RuntimeError("a loader worker without a parent process")
    threading.Thread(target=_exit_after, args=(training,), name="tilewise-watch", daemon=True).start()


def _exit_after(training: multiprocessing.process.BaseProcess) -> None:
    training.join()  # returns once the training process has ended
    os._exit(1)
