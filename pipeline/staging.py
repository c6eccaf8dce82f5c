"""Batches on their way to a CUDA device: stacked into pinned host buffers and copied on a side stream.

A copy from ordinary (pageable) host memory to a GPU is synchronous: the driver goes through a page-locked
buffer of its own, so the host stacks a batch, waits for its copy, and only then launches the forward pass,
while the GPU has nothing to do. Here a batch's tiles are stacked straight into a page-locked ("pinned") buffer
and its copy is queued on a side stream, so it runs while the GPU is still busy with the previous forward
pass. Page-locking memory is slow, so the buffers are allocated once per tile shape and type, as large as the
largest batch, and reused batch after batch.

The synchronisation, in order:

- the host writes into a buffer only once the copy out of it has finished (each copy records an event, and
  the next user of the buffer waits for it);
- the stream that runs the forward pass waits for the copy's event before it reads the batch on the device
  (``StagedBatch.tensors``);
- the batch on the device was allocated on the side stream, so it is marked as used by the forward pass's
  stream (``record_stream``): the caching allocator then does not hand its memory to a later copy before that
  stream is done with it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

Origin = tuple[int, int]


@dataclass(eq=False)
class PinnedBuffer:
    """A page-locked host array for up to ``capacity`` tiles, and the event of the last copy out of it."""

    host: torch.Tensor
    last_copy: torch.cuda.Event | None = None

    @property
    def capacity(self) -> int:
        return self.host.shape[0]

    def fill(self, image: np.ndarray, origins: Sequence[Origin], tile: int) -> torch.Tensor:
        """Write the tiles of ``image`` (..., rows, cols) at ``origins`` into the buffer, once the copy out of
        it has finished; the part of the buffer they fill."""
        if self.last_copy is not None:
            self.last_copy.synchronize()
        array = self.host.numpy()
        for k, (y, x) in enumerate(origins):
            array[k] = image[..., y : y + tile, x : x + tile]
        return self.host[: len(origins)]


@dataclass(frozen=True)
class StagedBatch:
    """A batch being copied to the device: its tensors there, and the event that marks the copy done."""

    origins: list[Origin]
    on_device: tuple[torch.Tensor, ...]
    copied: torch.cuda.Event

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The batch's tensors, usable on the current stream (which waits for the copy from here on)."""
        stream = torch.cuda.current_stream(self.on_device[0].device)
        stream.wait_event(self.copied)
        for tensor in self.on_device:
            tensor.record_stream(stream)
        return self.on_device


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


class BatchStager:
    """Stages batches of tiles for one CUDA device: pinned buffers reused batch after batch, copies queued on
    a side stream of the device. Threads may stage batches at the same time; each takes a buffer of its own."""

    def __init__(self, device: torch.device, capacity: int) -> None:
        self.device = device
        #: Tiles a buffer holds (the largest batch of the run); a larger batch gets a larger buffer.
        self.capacity = capacity
        self.stream = torch.cuda.Stream(device)
        self._lock = threading.Lock()
        self._free: dict[tuple[tuple[int, ...], np.dtype], deque[PinnedBuffer]] = {}
        #: Pinned buffers allocated so far (reused: a test checks that this stops growing).
        self.allocations = 0

    def stage(
        self, origins: Sequence[Origin], tile: int, image: np.ndarray, valid: np.ndarray | None = None
    ) -> StagedBatch:
        """Stack the tiles of ``image`` (and of ``valid``) at ``origins`` into pinned buffers and queue their
        copy to the device."""
        arrays = [image] if valid is None else [image, valid]
        keys = [((*a.shape[:-2], tile, tile), a.dtype) for a in arrays]
        buffers: list[PinnedBuffer] = []
        try:
            for shape, dtype in keys:
                buffers.append(self._take(shape, dtype, len(origins)))
            filled = [b.fill(a, origins, tile) for a, b in zip(arrays, buffers, strict=True)]
            copied = torch.cuda.Event()
            with torch.cuda.stream(self.stream):
                on_device = tuple(host.to(self.device, non_blocking=True) for host in filled)
                copied.record(self.stream)
            for buffer in buffers:
                buffer.last_copy = copied
        finally:
            with self._lock:
                for key, buffer in zip(keys, buffers, strict=False):  # those taken
                    self._free[key].append(buffer)
        return StagedBatch(list(origins), on_device, copied)

    def _take(self, shape: tuple[int, ...], dtype: np.dtype, tiles: int) -> PinnedBuffer:
        """A free buffer of ``shape`` and ``dtype`` for ``tiles`` tiles: the one whose copy finished longest ago,
        or a new one when none is free (another thread is filling each) or the free ones are too small."""
        with self._lock:
            free = self._free.setdefault((shape, dtype), deque())
            while free:
                buffer = free.popleft()
                if buffer.capacity >= tiles:
                    return buffer
            self.allocations += 1
        host = torch.empty((max(tiles, self.capacity), *shape), dtype=torch_dtype(dtype), pin_memory=True)
        return PinnedBuffer(host)

    def close(self) -> None:
        """Wait for the copies in flight and drop the buffers."""
        self.stream.synchronize()
        with self._lock:
            self._free.clear()
