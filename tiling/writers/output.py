"""A run's output as one context manager: the work store opened, the finished store assembled, or, on failure,
what the run finished kept for ``--resume``.

    output = RunOutput(fmt, content, work)
    with output.writing(chunk, chunk_grid, record, resume) as writing:
        ... tasks call writing.store.write(index, rows, cols, probs) ...
    # here the output is assembled, checked and in place, and the work store is gone

Leaving the block with an error aborts: whatever the assembly left beside the output is removed; the work store
is kept when it holds a finished chunk (a note on the error says so, and how to resume), and removed otherwise,
so a run that failed before any chunk finished leaves nothing behind. The free space is checked when the block
is entered, and a write failure for want of space says how much is free and how much the run needs.
"""

from __future__ import annotations

import contextlib
import errno
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError, TilewiseWarning, WriteFailure, attach_note, option
from ..storage import StoragePath
from .destination import Destination
from .disk import DiskCheck, check_needs, existing_folder, folder_size, mib
from .formats import OutputContent, OutputFormat
from .location import StoreLocation
from .workstore import WorkStore

ChunkIndex = tuple[int, int]


@dataclass
class Writing:
    """An open output: the work store the run's tasks write into and the chunks an earlier run finished."""

    store: WorkStore
    done: frozenset[ChunkIndex]
    #: Set by ``discard``: the work store goes even if it holds finished chunks (they are of no use).
    discarded: bool = False

    def discard(self) -> None:
        """Leave nothing behind if the run now fails (e.g. it found nothing to compute)."""
        self.discarded = True


class RunOutput:
    """One run's output: a format at its path, what it holds, and the work store it is assembled from."""

    def __init__(
        self,
        fmt: OutputFormat,
        content: OutputContent,
        work: StoreLocation,
        destination: Destination | None = None,
    ) -> None:
        fmt.check_content(content)
        self.format, self.content, self.work = fmt, content, work
        #: Where the output goes once assembled (a URL: uploaded from the format's scratch path).
        self.destination = destination or Destination(StoragePath(str(fmt.path)))

    @property
    def paths(self) -> list[Path]:
        """The files the format assembles (for an output at a URL, its scratch copies)."""
        return self.format.paths()

    @property
    def names(self) -> list[Path | str]:
        """The outputs as the user named them: paths, or URLs."""
        return [self.destination.name_of(path) for path in self.format.paths()]

    def disk_checks(self, chunk: int, resume: bool = False) -> list[DiskCheck]:
        """What the run writes at its peak, per filesystem, against the free space there. A resumed run's work
        store already holds part of it."""
        store_folder = self.work.path.parent if self.work.is_local else None
        needs = self.format.disk_needs(self.content, chunk, store_folder)
        written: dict[Path, int] = {}
        if resume and store_folder is not None and self.work.exists():
            written[store_folder] = folder_size(self.work.path)
        return check_needs(needs, written)

    def check_space(self, chunk: int, resume: bool) -> None:
        """Refuse a run that cannot fit even compressed; warn about one that may not fit."""
        for check in self.disk_checks(chunk, resume):
            if check.cannot_fit:
                raise OutputError(f"not enough free disk space for this run: {check.describe()}")
            if not check.fits:
                warnings.warn(f"the run may not fit on disk: {check.describe()}", TilewiseWarning, stacklevel=2)

    @contextlib.contextmanager
    def writing(
        self, chunk: tuple[int, int], chunk_grid: tuple[int, int], record: dict[str, Any], resume: bool
    ) -> Iterator[Writing]:
        """Open the work store (an interrupted run's, when ``resume``), yield it, then assemble the output."""
        self.check_space(chunk[0], resume)
        resuming = resume and self.work.exists()
        opened: Writing | None = None
        try:
            store = self._open(chunk, chunk_grid, record, resuming)
            opened = Writing(store, frozenset(store.done_chunks(chunk_grid)))
            yield opened
            if self.destination.scratch is not None:
                self.destination.scratch.mkdir(parents=True, exist_ok=True)
            self.format.assemble(store, self.content)
            if self.work.output is None:  # else the output was written in place
                self.destination.publish(self.format.paths())
            self.work.remove()
        except BaseException as exc:
            error = self._explained(exc, chunk[0])
            self.format.abort()
            if opened is not None:
                self._keep_or_remove(error, opened, chunk_grid)
            elif not resuming:  # the store was being created: nothing of it is finished
                self.work.remove()
            if error is exc:
                raise
            raise error from exc

    def _open(
        self, chunk: tuple[int, int], chunk_grid: tuple[int, int], record: dict[str, Any], resuming: bool
    ) -> WorkStore:
        paths = self.format.array_paths(self.content.layers)
        if resuming:
            return WorkStore.reopen(self.work, self.content, record, paths)
        self.work.remove()
        return WorkStore.create(self.work, self.content, chunk, chunk_grid, record, self.content.attributes(), paths)

    def _keep_or_remove(self, error: BaseException, opened: Writing, chunk_grid: tuple[int, int]) -> None:
        """Keep the work store when it holds finished chunks (saying so on ``error``), else remove it."""
        try:
            finished = len(opened.store.done_chunks(chunk_grid))
        except Exception:  # an unreadable store: keep it rather than lose finished work
            attach_note(error, f"the work store {self.work} is kept")
            return
        if finished and not opened.discarded:
            total = chunk_grid[0] * chunk_grid[1]
            attach_note(
                error,
                f"{finished} of {total} chunks are done and kept in {self.work}: run the same command with "
                f"{option('resume')} to continue once the problem is fixed",
            )
        else:
            self.work.remove()

    def _explained(self, error: BaseException, chunk: int) -> BaseException:
        """A write failure for want of space, with the free space and what the run needs where it failed."""
        if not isinstance(error, WriteFailure) or error.errno != errno.ENOSPC or error.context:
            return error
        device = existing_folder(error.path.parent).stat().st_dev
        for check in self.disk_checks(chunk):
            if check.device_folder.stat().st_dev == device:
                return error.in_context(
                    f"{mib(check.free)} free there; this run writes up to {mib(check.upper)} there "
                    f"uncompressed, at least {mib(check.lower)}"
                )
        return error
