"""Errors that reach the user as one line.

Every problem the user can fix (bad input, bad option, unwritable output) is raised as a ``TilewiseError``
subclass whose message names the problem; the CLI prints it on one line. Anything else is a bug.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

#: Attribute under which ``attach_note`` keeps its notes on an exception (``BaseException.add_note`` needs 3.11).
_NOTES = "tilewise_notes"
#: Which interface messages speak to: the command line (flags) or Python (keyword arguments).
_INTERFACE: ContextVar[str] = ContextVar("tilewise_interface", default="python")


def option(name: str, value: str = "True") -> str:
    """An option as the user in front of the message writes it: ``--name`` on the command line, ``name=value``
    in Python (``option("overwrite")`` → ``--overwrite`` or ``overwrite=True``)."""
    return f"--{name.replace('_', '-')}" if _INTERFACE.get() == "cli" else f"{name}={value}"


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Messages raised inside the block name options as command-line flags."""
    token = _INTERFACE.set("cli")
    try:
        yield
    finally:
        _INTERFACE.reset(token)


class TilewiseError(Exception):
    """A problem with the user's input, options or environment; the message is shown as is."""


class InputError(TilewiseError):
    """The input raster is missing, unreadable, corrupt or unsuitable."""


class OptionError(TilewiseError):
    """An option or config value is invalid (the CLI exits with status 2 for these)."""


class OutputError(TilewiseError):
    """The output cannot be written where asked."""


class CheckpointError(TilewiseError):
    """The model checkpoint is missing, corrupt or not a tilewise checkpoint."""


class TilewiseWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one line)."""


class WriteFailure(OutputError):
    """Writing ``path`` failed: the disk is full (``ENOSPC``), a file grew past a size limit (``EFBIG``), or any
    other write error. ``errno`` is None where the writer (GDAL) gave only a message."""

    def __init__(self, path: str | os.PathLike[str], errno_: int | None, detail: str = "", context: str = "") -> None:
        self.path, self.errno, self.detail, self.context = Path(path), errno_, detail, context
        #: The path as given (``Path`` would turn ``s3://b/k`` into ``s3:/b/k``).
        self.where = os.fspath(path)
        super().__init__(self._message())

    def _message(self) -> str:
        if self.errno == errno.ENOSPC:
            text = f"no space left on the device writing {self.where}"
        elif self.errno == errno.EFBIG:
            text = f"file too large: {self.where} reached the file-size limit"
        elif self.errno == getattr(errno, "EDQUOT", None):
            text = f"disk quota exceeded writing {self.where}"
        else:
            text = f"cannot write {self.where}"
        text += f": {self.detail}" if self.detail else ""
        return f"{text} ({self.context})" if self.context else text

    @property
    def out_of_space(self) -> bool:
        """The disk (or a size or quota limit) ran out, rather than another write error."""
        return self.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None))

    def in_context(self, context: str) -> WriteFailure:
        """The same failure with ``context`` (free space, what the run needs) added to its message."""
        return WriteFailure(self.where, self.errno, self.detail, context)

    def __reduce__(self) -> tuple[object, ...]:  # picklable across a cluster (its __init__ takes more than a message)
        return (WriteFailure, (self.where, self.errno, self.detail, self.context))


def write_failure(path: str | os.PathLike[str], error: OSError) -> WriteFailure:
    """The ``WriteFailure`` for an ``OSError`` raised while writing ``path``."""
    quiet = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None))
    return WriteFailure(path, error.errno, "" if error.errno in quiet else _reason(error))


def _reason(error: OSError) -> str:
    return error.strerror or " ".join(str(error).split()) or type(error).__name__


_Task = TypeVar("_Task", bound=Callable[..., Any])


def portable_errors(task: _Task) -> _Task:
    """A task whose ``TilewiseError`` crosses process boundaries whole. Dask's distributed workers pickle a
    failed task's exception with its chained causes; a cause from a C library (rasterio's CPLE errors) does not
    unpickle, and the client then receives a bare ``Exception`` naming it instead of the user's error."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except TilewiseError as error:
            error.__cause__ = error.__context__ = None
            raise

    return run  # type: ignore[return-value]


def attach_note(error: BaseException, note: str) -> None:
    """Attach a sentence the CLI prints after ``error``'s message, e.g. what a failed run left for ``--resume``."""
    setattr(error, _NOTES, [*notes(error), note])


def notes(error: BaseException) -> list[str]:
    return list(getattr(error, _NOTES, ()))
