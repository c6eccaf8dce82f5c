"""Formats whose output is the finished work store itself: Zarr, OME-Zarr and NGFF label images.

Assembling one completes the store (pyramid levels, NGFF metadata), seals it (done flags dropped, descriptive
attributes set), checks it, and moves it to the output path: a rename next to it, a copy where the work store
is on another filesystem (``--work-dir``), a download where it is remote. A reader never sees a half-made
output at that path. An output on object storage whose work store is there too is written in place instead
(``write_in_place``, module ``in_place``): its arrays at the URL from the start, its root metadata last.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ..errors import write_failure
from .atomic import commit, remove_path
from .disk import DiskNeed, existing_folder
from .formats import OutputContent, OutputFormat
from .verify import verify_zarr
from .workstore import WorkStore, store_disk_need
from .write_errors import os_write_errors


class ZarrStoreFormat(OutputFormat):
    """The finished work store, moved to the output path (see the module's docstring)."""

    #: Whether the store gets pyramid levels beside level 0 (and needs room for them).
    levels_in_store = False
    #: Whether an output of the format on object storage can be written in place (``write_in_place``).
    in_place_capable = True
    #: The URL the output is written at in place, when it is (its ``path`` is then unused).
    url: str | None = None

    def write_in_place(self, url: str) -> None:
        self.url = url

    def layer_raster(self, name: str) -> Path | str | None:
        return self.located(super().layer_raster(name))

    def located(self, path: Path | str | None) -> Path | str | None:
        """``path`` inside the output, or its URL when the output is written in place."""
        if self.url is None or path is None:
            return path
        return f"{self.url.rstrip('/')}/{Path(path).relative_to(self.path).as_posix()}"

    def complete(self, store: WorkStore, content: OutputContent) -> None:
        """Add what the format needs beyond level 0 (pyramid levels, metadata) to the store."""

    def expected_arrays(self, store: WorkStore, content: OutputContent) -> dict[str, tuple[int, ...]]:
        """Arrays the finished output holds (path → shape), for its check."""
        info = content.info
        return {store.paths[layer.name]: layer.shape(info.height, info.width) for layer in content.layers}

    def committed(self, content: OutputContent) -> None:
        """What follows the move into place (an NGFF label image lists itself in its image)."""

    @property
    def copy_path(self) -> Path:
        """Where a work store that cannot be renamed into place (remote, another filesystem) is copied first."""
        return self.path.with_name(self.path.name + ".copying")

    def assemble(self, store: WorkStore, content: OutputContent) -> None:
        where = store.location.url
        try:
            self.complete(store, content)
            store.seal(content.attributes())
        except OSError as exc:
            raise write_failure(where, exc) from None
        verify_zarr(Path(where), store.group, self.expected_arrays(store, content))
        self._move_into_place(store)
        self.committed(content)

    def _move_into_place(self, store: WorkStore) -> None:
        location = store.location
        if location.output is not None:
            location.commit_output()
            return
        with os_write_errors(self.path):
            if location.is_local:
                try:
                    commit(location.path, self.path)
                    return
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                remove_path(self.copy_path)
                shutil.copytree(location.path, self.copy_path)
            else:
                remove_path(self.copy_path)
                location.download(self.copy_path)
            commit(self.copy_path, self.path)
        location.remove()

    def abort(self) -> None:
        remove_path(self.copy_path)

    def disk_needs(self, content: OutputContent, chunk: int, store_folder: Path | None) -> list[DiskNeed]:
        if self.url is not None:  # written in place on object storage: nothing on local disk
            return []
        store = store_disk_need(content, chunk, store_folder or self.path.parent, self.levels_in_store)
        copy = DiskNeed(self.path.parent, store.upper, store.lower, f"the {self.name} output")
        if store_folder is None:  # a remote work store, downloaded beside the output
            return [copy]
        return [store] if _same_filesystem(store_folder, self.path.parent) else [store, copy]


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(existing_folder(a)).st_dev == os.stat(existing_folder(b)).st_dev


class ZarrFormat(ZarrStoreFormat):
    """A Zarr v3 group (``.zarr``) with ``labels`` (y, x) and/or ``probs`` (class, y, x) and the georeferencing,
    class names and run record in its attributes."""

    name = "zarr"
    suffixes = (".zarr",)
