"""Where a run's work store lives: a local path (by default next to the output) or an fsspec URL.

Workers of a cluster write into the store themselves, so it must be somewhere they all reach: a shared
filesystem path, or an object store URL (``s3://…``, ``gs://…``, ``file://…``) through fsspec. The store of a
Zarr output on object storage keeps the output's arrays at the output URL itself (``output``; see ``in_place``),
except where it replaces an output already there (``staged``): the old one stays whole while the run writes its
own into the work store, which is copied over it when done (``commit_output``).
"""

from __future__ import annotations

import errno
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zarr

from ..errors import OptionError
from ..storage import StoragePath, filesystem, storage_error
from .atomic import partial_path
from .in_place import ROOT_METADATA, ROOT_NAMES, RUN_ONLY, InPlaceStore

#: Attempts at removing a local store that files are still landing in, and the pause between them.
REMOVE_ATTEMPTS, REMOVE_PAUSE = 20, 0.05


def _remove_local(path: Path) -> None:
    """Remove a local store. zarr writes from its own I/O thread, which finishes a write that an interrupted
    caller stopped waiting for (Ctrl-C while the store was being created): a file may land while the store is
    removed, so the removal is tried again for a moment."""
    for attempt in range(REMOVE_ATTEMPTS):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT) or attempt == REMOVE_ATTEMPTS - 1:
                raise
            time.sleep(REMOVE_PAUSE)


@dataclass(frozen=True)
class StoreLocation:
    """A local path or an fsspec URL of a Zarr group."""

    url: str
    #: The URL of a Zarr output written in place: the group's arrays are there, only its root metadata, done
    #: flags and work arrays at ``url`` until ``commit_output``.
    output: str | None = None
    #: For an ``output`` that replaces one already there: the whole group at ``url`` (the old output untouched)
    #: until ``commit_output`` copies it over the old one.
    staged: bool = False

    @classmethod
    def for_output(cls, output: Path | StoragePath, work_dir: str | None) -> StoreLocation:
        """``OUTPUT.partial`` next to the output (a path or URL), or under ``work_dir`` (a folder or URL)."""
        target = StoragePath.of(output)
        name = partial_path(Path(target.name)).name
        if work_dir is None:
            return cls(target.sibling(name).text)
        if "://" in work_dir:
            return cls(f"{work_dir.rstrip('/')}/{name}")
        folder = Path(work_dir)
        if not folder.is_dir():
            raise OptionError(f"work folder {folder} does not exist")
        return cls(str(folder / name))

    def writing_output_at(self, url: str) -> StoreLocation:
        """This store keeping the arrays of the output at ``url`` there (a Zarr output written in place), when
        both are on the same object store; else this store as it is (the output is then assembled and uploaded)."""
        if self.is_local or StoragePath(self.url).scheme != StoragePath(url).scheme:
            return self
        return StoreLocation(self.url, output=url)

    def staging(self) -> StoreLocation:
        """This store holding the whole output until it is committed over the one at ``output`` (``staged``)."""
        return replace(self, staged=True)

    def holds_output_keys(self) -> bool:
        """Whether the remote store at ``url`` holds keys of an output (arrays), not only the run's: a staged
        store."""
        fs, path = self._fs()
        try:
            fs.invalidate_cache(path)
            names = [name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise storage_error(exc, f"the work store {self.url}") from None
        return any(name not in (ROOT_METADATA, *RUN_ONLY) for name in names)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    @property
    def path(self) -> Path:
        """The local path (only for local locations)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return Path(self.url)

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        if self.url.startswith("file://"):
            return fsspec.core.url_to_fs(self.url, **self.storage_options)
        return filesystem(self.url)

    @property
    def storage_options(self) -> dict[str, Any]:
        # fsspec's local filesystem does not create folders unless told to.
        return {"auto_mkdir": True} if self.url.startswith("file://") else {}

    def open_group(self, mode: str, **kwargs: Any) -> zarr.Group:
        if self.output is not None and not self.staged:
            return zarr.open_group(InPlaceStore.at(self.output, self.url, read_only=mode == "r"), mode=mode, **kwargs)
        if self.is_local:
            return zarr.open_group(self.url, mode=mode, **kwargs)
        return zarr.open_group(self.url, mode=mode, storage_options=self.storage_options, **kwargs)

    def exists(self) -> bool:
        if self.is_local:
            return Path(self.url).exists()
        fs, path = self._fs()
        try:
            return bool(fs.exists(path))
        except Exception as exc:
            raise storage_error(exc, f"the work store {self.url}") from None

    def remove(self) -> None:
        """Remove the store; of an output written in place, the arrays too unless the output was committed (a
        staged store's output, the old one, is left as it is)."""
        if self.is_local:
            _remove_local(Path(self.url))
            return
        fs, path = self._fs()
        try:
            if fs.exists(path):
                fs.rm(path, recursive=True)
            if self.output is not None and not self.staged:
                output = filesystem(self.output)[1]
                if not fs.exists(f"{output}/{ROOT_METADATA}") and fs.exists(output):
                    fs.rm(output, recursive=True)
        except Exception as exc:
            raise storage_error(exc, f"the work store {self.url}") from None

    def commit_output(self) -> None:
        """Make an output written in place whole: its root metadata copied there (last), the rest removed. A
        staged store replaces the old output: that one removed (its root metadata first, so it stops being an
        image), the store's keys copied in its place (server-side), its root metadata last."""
        assert self.output is not None
        fs, path = self._fs()
        output = filesystem(self.output)[1]
        try:
            if self.staged:
                remove_remote_store(fs, output)
                fs.invalidate_cache(path)
                keys = [key for key in fs.find(path) if key != f"{path}/{ROOT_METADATA}"]
                if keys:
                    fs.copy(keys, [output + key[len(path) :] for key in keys])
            fs.copy(f"{path}/{ROOT_METADATA}", f"{output}/{ROOT_METADATA}")
            fs.rm(path, recursive=True)
            fs.invalidate_cache(output)
        except Exception as exc:
            raise storage_error(exc, f"committing {self.output}") from None

    def download(self, local: Path) -> None:
        """Copy the store to the local folder ``local`` (which must not exist)."""
        fs, path = self._fs()
        fs.get(path.rstrip("/") + "/", str(local), recursive=True)

    def __str__(self) -> str:
        return self.url


def remove_remote_store(fs: Any, path: str) -> None:
    """Remove the Zarr store at ``path`` of ``fs``, if any: its root metadata first (a reader then no longer
    takes what is left for an image), then the rest."""
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return
    roots = [key for key in fs.ls(path, detail=False) if key.rstrip("/").rsplit("/", 1)[-1] in ROOT_NAMES]
    if roots:
        fs.rm(roots)
    fs.rm(path, recursive=True)
    fs.invalidate_cache(path)
