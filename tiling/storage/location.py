"""``StoragePath``: where a file or store is — a local path, or a URL of object storage.

Anything tilewise reads or writes may be ``s3://bucket/key``, ``https://host/path``, ``gs://``, ``az://`` or
one of GDAL's own names for them (``/vsis3/``, ``/vsicurl/``, ``/vsigs/``, ``/vsiaz/``). A ``StoragePath`` keeps
the name as the user wrote it (for messages) and gives each library the name it takes: fsspec's URL
(``url``) and GDAL's virtual path (``gdal_path``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import storage_error
from .read_cache import SmallReadAheadCache

#: fsspec scheme → GDAL virtual file system.
_GDAL_PREFIX = {"s3": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "abfs": "/vsiaz/"}
_FROM_GDAL = {"/vsis3/": "s3://", "/vsigs/": "gs://", "/vsiaz/": "az://", "/vsiadls/": "abfs://"}
_CURL = "/vsicurl/"
#: Small reads of a remote file (a TIFF's tags) come from requests of this many bytes; tile reads are exact
#: (``read_cache.SmallReadAheadCache``).
READ_BLOCK = 16 * 2**10


@dataclass(frozen=True)
class StoragePath:
    """A local path or an object-storage URL, as the user named it."""

    text: str

    @classmethod
    def of(cls, value: str | os.PathLike[str] | StoragePath) -> StoragePath:
        if isinstance(value, StoragePath):
            return value
        return cls(os.fspath(value))

    @property
    def is_remote(self) -> bool:
        return is_remote(self.text)

    @property
    def url(self) -> str:
        """The fsspec URL (``s3://bucket/key``); the path itself when local."""
        text = self.text
        if text.startswith(_CURL):
            return text[len(_CURL) :]
        for prefix, scheme in _FROM_GDAL.items():
            if text.startswith(prefix):
                return scheme + text[len(prefix) :]
        return text

    @property
    def scheme(self) -> str:
        url = self.url
        return url.split("://", 1)[0] if "://" in url else "file"

    @property
    def gdal_path(self) -> str:
        """The name GDAL opens: ``/vsis3/bucket/key`` for ``s3://bucket/key``, ``/vsicurl/https://…`` for HTTP."""
        if not self.is_remote or self.text.startswith("/vsi"):
            return self.text
        scheme, rest = self.url.split("://", 1)
        if scheme in ("http", "https"):
            return _CURL + self.url
        return _GDAL_PREFIX.get(scheme, f"/vsi{scheme}/") + rest

    @property
    def local(self) -> Path:
        """The local path (only for local locations)."""
        if self.is_remote:
            raise ValueError(f"{self.text} is not a local path")
        return Path(self.text)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def sibling(self, name: str) -> StoragePath:
        """The location ``name`` beside this one (same folder or key prefix)."""
        if not self.is_remote:
            return StoragePath(str(Path(self.text).with_name(name)))
        return StoragePath(self.url.rstrip("/").rsplit("/", 1)[0] + "/" + name)

    def child(self, name: str) -> StoragePath:
        if not self.is_remote:
            return StoragePath(str(Path(self.text) / name))
        return StoragePath(self.url.rstrip("/") + "/" + name)

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the path inside it."""
        return filesystem(self.url)

    def info(self) -> dict[str, Any]:
        """What the store says of the object (``size``, ``type``, an ``ETag`` or modification time)."""
        fs, path = self.filesystem()
        try:
            return dict(fs.info(path))
        except Exception as exc:
            raise storage_error(exc, self.text) from None

    def exists(self) -> bool:
        if not self.is_remote:
            return os.path.lexists(self.text)
        fs, path = self.filesystem()
        try:
            return bool(fs.exists(path))
        except Exception as exc:
            raise storage_error(exc, self.text) from None

    def is_dir(self) -> bool:
        if not self.is_remote:
            return Path(self.text).is_dir()
        fs, path = self.filesystem()
        try:
            return bool(fs.isdir(path))
        except Exception as exc:
            raise storage_error(exc, self.text) from None

    def version(self) -> dict[str, Any]:
        """What changes when the object is replaced: size and modification time (local), size and ETag."""
        if not self.is_remote:
            stat = os.stat(self.text)
            return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        info = self.info()
        tag = info.get("ETag") or info.get("etag") or str(info.get("LastModified") or info.get("mtime") or "")
        return {"size": int(info.get("size") or 0), "etag": str(tag).strip('"')}

    def open_read(self, block_size: int = READ_BLOCK) -> BinaryIO:
        """A seekable binary file that fetches ranges as they are read."""
        if not self.is_remote:
            return open(self.text, "rb")
        fs, path = self.filesystem()
        try:
            return fs.open(path, "rb", block_size=block_size, cache_type=SmallReadAheadCache.name)  # type: ignore[no-any-return]
        except Exception as exc:
            raise storage_error(exc, self.text) from None

    def __str__(self) -> str:
        return self.text


def is_remote(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` names object storage (a URL other than ``file://``, or a GDAL ``/vsi…`` network path)."""
    text = os.fspath(value)
    if text.startswith(("/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", _CURL)):
        return True
    return "://" in text and not text.startswith("file://")


#: What to install for each scheme fsspec needs a package for.
_EXTRAS = {"s3": "tilewise[s3]", "s3a": "tilewise[s3]", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem for ``url`` and the path inside it; a missing package is a one-line error."""
    import fsspec

    from ..errors import OptionError

    try:
        return fsspec.core.url_to_fs(url)  # type: ignore[no-any-return]
    except ImportError:
        scheme = url.split("://", 1)[0]
        package = _EXTRAS.get(scheme, "the fsspec package for it")
        raise OptionError(f"{scheme}:// needs an extra package: pip install '{package}'") from None
    except ValueError as exc:
        raise OptionError(f"cannot read {url}: {exc}") from None
