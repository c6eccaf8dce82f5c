"""No silent write failure: every error a writer meets becomes a ``WriteFailure`` naming the file.

Python writers (zarr, tifffile, Pillow) raise ``OSError``s that say nothing of the file; ``os_write_errors``
names it. GDAL is harder: rasterio raises for the errors a call returns, but a COG copy that runs out of space
part-way can still return normally. Its only traces are the errors rasterio logs and libtiff's own lines,
which libtiff prints straight to the C library's stderr (``_tiffWriteProc: No space left on device.``).
``gdal_write_errors`` collects both while GDAL writes, keeps them from the terminal, and raises if any was an
error. Even so, an assembled file is checked before it is moved into place (``verify``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from ..errors import WriteFailure, write_failure

#: errno values a GDAL message may name (by their ``strerror`` text), most telling first.
_NAMED_ERRNOS = tuple(
    code
    for code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EIO)
    if code is not None
)
_CAPTURE_LOCK = threading.RLock()


@contextlib.contextmanager
def os_write_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Raise a ``WriteFailure`` naming ``path`` for an ``OSError`` raised inside the block."""
    try:
        yield
    except WriteFailure:
        raise
    except OSError as exc:
        raise write_failure(path, exc) from exc


@contextlib.contextmanager
def c_stderr(lines: list[str]) -> Iterator[None]:
    """Keep what C libraries print on file descriptor 2 inside the block from the terminal; append it to
    ``lines``. Python's own ``sys.stderr`` writes to the same descriptor, so nothing else should print meanwhile
    (the block is one writer's call, made while no other thread of the run is at work)."""
    with _CAPTURE_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR or message.startswith("GDAL signalled an error"):
            self.messages.append(message)


@contextlib.contextmanager
def gdal_write_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Raise a ``WriteFailure`` for ``path`` when GDAL meets an error inside the block: raised, logged by
    rasterio, or printed by libtiff. rasterio's log records of the block are kept from the terminal."""
    logger = logging.getLogger("rasterio")
    collector = _Collector()
    printed: list[str] = []
    raised: BaseException | None = None
    with _CAPTURE_LOCK:
        level, propagate = logger.level, logger.propagate
        logger.addHandler(collector)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            with c_stderr(printed):
                try:
                    yield
                except (RasterioError, CPLE_BaseError, OSError) as exc:
                    raised = exc
        finally:
            logger.removeHandler(collector)
            logger.setLevel(level)
            logger.propagate = propagate
    if raised is None and not collector.messages and not printed:
        return
    texts = [*printed, *collector.messages, *([] if raised is None else [str(raised)])]
    code = getattr(raised, "errno", None) if isinstance(raised, OSError) else None
    code = code or named_errno(" ".join(texts))
    detail = "" if code in (errno.ENOSPC, errno.EFBIG) else "; ".join(" ".join(t.split()) for t in texts[:2])
    raise WriteFailure(path, code, detail) from raised


def named_errno(text: str) -> int | None:
    """The errno whose message appears in ``text`` (GDAL reports them only as text)."""
    return next((code for code in _NAMED_ERRNOS if os.strerror(code) in text), None)
