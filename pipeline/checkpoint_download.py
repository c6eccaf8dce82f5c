"""Checkpoints by URL (``s3://…``, ``https://…``): downloaded once per process into a local cache keyed by the
checksum of their weights, then loaded like any checkpoint (safetensors: never unpickled).

The checksum is in the safetensors header, read first with two ranged requests: a checkpoint already cached
(by this process, another worker on the host or an earlier run) is not downloaded again, and one replaced at
its URL is downloaded afresh. The cache folder is ``TILEWISE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tilewise``,
else ``~/.cache/tilewise``.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from tiling.errors import CheckpointError
from tiling.storage import StoragePath, is_remote, storage_error

#: A safetensors header larger than this is not one (the format's own limit is 100 MB).
MAX_HEADER = 100 * 2**20

_LOCK = threading.Lock()
#: This process's downloads, by URL and the checksum its header stated.
_DOWNLOADED: dict[tuple[str, str], Path] = {}


def cache_folder() -> Path:
    root = os.environ.get("TILEWISE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tilewise"
    )
    return Path(root) / "checkpoints"


def local_checkpoint(source: str | os.PathLike[str]) -> Path:
    """The local file of checkpoint ``source``: the path itself, or a URL's cached download."""
    if not is_remote(source):
        return Path(source)
    location = StoragePath.of(source)
    digest = remote_digest(location)
    with _LOCK:
        known = _DOWNLOADED.get((location.text, digest))
        if known is not None and known.exists():
            return known
        path = cache_folder() / f"{digest}.safetensors"
        if not (path.exists() and _header_digest(path) == digest):
            _download(location, path)
        _DOWNLOADED[(location.text, digest)] = path
        return path


def remote_digest(location: StoragePath) -> str:
    """The weights checksum a remote checkpoint's header states (its first few kilobytes, not the weights)."""
    try:
        fs, path = location.filesystem()
        with fs.open(path, "rb", block_size=2**16, cache_type="readahead") as f:
            return _stated_digest(f.read(8), f.read, location.text)
    except Exception as exc:  # a CheckpointError passes through storage_error as it is
        raise storage_error(exc, f"checkpoint {location}") from None


def _header_digest(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return _stated_digest(f.read(8), f.read, str(path))
    except (OSError, CheckpointError):
        return None


def _stated_digest(size_bytes: bytes, read: Callable[[int], bytes], where: str) -> str:
    """``weights_sha256`` of the safetensors header that follows the 8-byte little-endian length ``size_bytes``."""
    if len(size_bytes) != 8:
        raise CheckpointError(f"checkpoint {where} is not a readable safetensors file (too short)")
    (size,) = struct.unpack("<Q", size_bytes)
    if size > MAX_HEADER:
        raise CheckpointError(f"checkpoint {where} is not a readable safetensors file (no safetensors header)")
    try:
        header = json.loads(read(size))
    except ValueError:
        raise CheckpointError(
            f"checkpoint {where} is not a readable safetensors file; tilewise never unpickles checkpoints, since "
            "that can run code"
        ) from None
    try:
        digest = header["__metadata__"]["weights_sha256"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{where} is a safetensors file but not a tilewise checkpoint (no weights checksum in its header)"
        ) from None
    if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise CheckpointError(f"checkpoint {where} states no valid weights checksum")
    return digest


def _download(location: StoragePath, path: Path) -> None:
    """Copy ``location`` to ``path`` through a partial file (another process may be downloading it too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    fs, remote = location.filesystem()
    try:
        fs.get_file(remote, str(partial))
        os.replace(partial, path)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise storage_error(exc, f"checkpoint {location}") from None
