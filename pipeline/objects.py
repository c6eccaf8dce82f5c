"""A run's objects: the passes of ``tiling.instances`` over the work store, once every chunk is written and
before the output is assembled, on the run's own threads or its Dask cluster.

Each per-chunk pass skips the chunks its flag says are done, so a resumed run picks up where the interrupted
one stopped; the passes that run once (joining the pieces, numbering the objects) read only small tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tiling.instances.passes import Objects, chunk_ids, chunk_indices, grow_and_measure, join, number, write_ids
from tiling.plan import ChunkPlan
from tiling.writers import WorkStore


@dataclass(frozen=True)
class TaskRunner:
    """Runs one function over many argument tuples: on local threads, or on a Dask cluster's workers."""

    workers: int = 1
    client: Any = None

    def map(self, function: Callable[..., None], arguments: Sequence[tuple[Any, ...]]) -> None:
        if not arguments:
            return
        if self.client is not None:
            self.client.gather(self.client.map(function, *zip(*arguments, strict=True), pure=False))
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="tilewise-objects") as pool:
            for _ in pool.map(lambda args: function(*args), arguments):
                pass


def find_objects(store: WorkStore, chunks: ChunkPlan, tasks: TaskRunner) -> Objects:
    """Join, grow, measure and number the objects of a run whose chunks are all in ``store``; write the instance
    ids. Returns every object's measures, id and class."""
    joined = join(store, chunks)
    done = store.flagged("objects")
    todo = [index for index in chunk_indices(chunks) if index not in done]
    tasks.map(grow_and_measure, [(store, chunks, index, joined.around(index)) for index in todo])
    assert store.instances is not None
    objects = number(store, chunks, joined, store.instances.min_area)
    done = store.flagged("ids")
    todo = [index for index in chunk_indices(chunks) if index not in done]
    tasks.map(write_ids, [(store, chunks, index, chunk_ids(store, index, objects)) for index in todo])
    return objects
