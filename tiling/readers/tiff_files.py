"""Opening a TIFF with tifffile so that a damaged file is one clear error.

tifffile tells of some damage only in log records (``invalid offset to first page`` for a file cut before its
first directory) and then presents a file with no pages, on which any later step fails obscurely. ``open_tiff``
collects those records while it opens the file, and refuses a file without an image, naming the file and what
tifffile found.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import tifffile

from ..errors import InputError, TilewiseError
from ..storage import StoragePath

_LOGGER = logging.getLogger("tifffile")
_LOCK = threading.Lock()


class _Messages(logging.Handler):
    def __init__(self, thread: int) -> None:
        super().__init__(logging.WARNING)
        self.thread, self.messages = thread, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:  # tifffile prefixes the object it was reading: "<tifffile.TiffPages @8>"
            self.messages.append(re.sub(r"^<[^>]*>\s*", "", " ".join(record.getMessage().split())))


class _RemoteTiff(tifffile.TiffFile):
    """A TIFF read through an fsspec file (ranged requests), which it closes with itself."""

    def __init__(self, source: Any) -> None:
        self.source = source
        try:
            super().__init__(source)
        except BaseException:
            source.close()
            raise

    def close(self) -> None:
        super().close()
        self.source.close()


def open_tiff(path: str) -> tifffile.TiffFile:
    """``path`` (a local path or a URL) opened by tifffile, or an ``InputError`` naming the file and the
    problem."""
    location = StoragePath.of(path)
    collector = _Messages(threading.get_ident())
    with _LOCK:
        _LOGGER.addHandler(collector)
    try:
        tif = _RemoteTiff(location.open_read()) if location.is_remote else tifffile.TiffFile(path)
        has_image = len(tif.pages) > 0 and bool(tif.series)
    except TilewiseError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(f"{path} is not a readable TIFF: {' '.join(str(exc).split())}") from None
    finally:
        with _LOCK:
            _LOGGER.removeHandler(collector)
    if not has_image:
        tif.close()
        why = collector.messages[0] if collector.messages else "it holds no image"
        raise InputError(f"{path} is not a readable TIFF ({why}): it may have been cut short")
    return tif
