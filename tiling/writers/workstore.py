"""The work store: a run's resumable intermediate output.

Every run writes its finished chunks into a Zarr v3 group next to the output (``OUTPUT.partial``): one array per
output layer (``labels`` (y, x), ``probs`` (class, y, x)), chunked like the run so that concurrent writers — threads
or worker processes — never touch the same Zarr chunk, and a ``done`` array with one element per chunk, set
*after* the chunk's data is written. A chunk that is present is not proof that it is complete; its done flag is.
``--resume`` reopens the store, checks that the run is the same one (same input, model and settings) and runs
only the chunks whose flag is unset. The final output (GeoTIFF/COG, OME-TIFF, (OME-)Zarr) is assembled from the
store by a single writer once every chunk is done. A Zarr output is the store itself, *sealed*: its done flags
and run record dropped, a digest of the record kept (so a run whose last step, the rename, failed can still be
resumed, and only by the same run).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import OptionError, OutputError, write_failure
from ..plan import Span
from .disk import MIN_CHUNK_FILE, OVERHEAD, DiskNeed
from .layers import Layer
from .location import StoreLocation

if TYPE_CHECKING:
    from .formats import OutputContent

RUN_KEY = "tilewise_run"
#: A sealed store's digest of its run record (``run_digest``).
SEALED_KEY = "tilewise_run_sha256"
DONE = "done"
#: Fast compression: the store is written once and read once, most often on local disk.
COMPRESSORS = (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),)
#: Write every chunk as it comes (set where the store opens its arrays, ``WorkStore._array``, and on the pyramid
#: levels built next to them). By default zarr first compares a chunk with the fill value to skip writing it
#: when empty, with ``np.array_equal`` against a broadcast copy: 20 ms of a 25 ms write of a 1792² uint8 chunk.
#: An empty chunk compresses to a few hundred bytes anyway.
ARRAY_CONFIG = {"write_empty_chunks": True}


class WorkStore:
    """A run's chunks on disk, with a completion flag per chunk. Picklable: workers reopen it by path."""

    def __init__(self, location: StoreLocation, layers: tuple[Layer, ...], paths: dict[str, str]) -> None:
        self.location = location
        self.layers = layers
        #: Where each layer's level-0 array sits in the group (format-specific: OME-Zarr wants NGFF paths).
        self.paths = paths
        self._group: zarr.Group | None = None
        #: Arrays by path, opened once per process (opening one reads its metadata from the store).
        self._arrays: dict[str, zarr.Array] = {}

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = self.location.open_group(mode="r+")
        return self._group

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "layers": self.layers, "paths": self.paths, "_group": None, "_arrays": {}}

    @classmethod
    def create(
        cls,
        location: StoreLocation,
        content: OutputContent,
        chunk: tuple[int, int],
        chunk_grid: tuple[int, int],
        run: dict[str, Any],
        attributes: dict[str, Any],
        paths: dict[str, str],
    ) -> WorkStore:
        """A new, empty store at ``location`` (anything already there is replaced)."""
        info = content.info
        try:
            group = location.open_group(mode="w", zarr_format=3, attributes={**attributes, RUN_KEY: run})
            for layer in content.layers:
                parent, _, name = paths[layer.name].rpartition("/")
                (group.require_group(parent) if parent else group).create_array(
                    name,
                    shape=layer.shape(info.height, info.width),
                    chunks=chunk if layer.is_labels else (layer.count, *chunk),
                    dtype=layer.dtype,
                    fill_value=layer.nodata,
                    compressors=COMPRESSORS,
                    dimension_names=("y", "x") if layer.is_labels else ("band", "y", "x"),
                    attributes={
                        "nodata": None if np.isnan(layer.nodata) else layer.nodata,
                        "band_names": list(layer.band_names),
                        # Each array carries its georeferencing, so it can be read on its own.
                        "crs": info.crs,
                        "transform": list(info.transform) if info.transform else None,
                    },
                )
            group.create_array(DONE, shape=chunk_grid, chunks=(1, 1), dtype="uint8", fill_value=0)
        except OSError as exc:
            raise write_failure(location.url, exc) from None
        store = cls(location, content.layers, paths)
        store._group = group
        return store

    @classmethod
    def reopen(
        cls, location: StoreLocation, layers: tuple[Layer, ...], run: dict[str, Any], paths: dict[str, str]
    ) -> WorkStore:
        """The store of an interrupted run, if it was the same run; otherwise an error naming what changed."""
        recorded = recorded_run(location)
        if SEALED_KEY in recorded:  # finished and sealed; only its move into place failed
            if recorded[SEALED_KEY] != run_digest(run):
                raise OptionError(f"cannot resume: {location} holds the finished output of a different run")
            return cls(location, layers, paths)
        changed = sorted(k for k in set(recorded) | set(run) if recorded.get(k) != run.get(k))
        if changed:
            details = "; ".join(f"{k}: was {recorded.get(k)!r}, now {run.get(k)!r}" for k in changed[:4])
            raise OptionError(f"cannot resume: the input or settings changed since the interrupted run ({details})")
        return cls(location, layers, paths)

    def write(self, index: tuple[int, int], rows: Span, cols: Span, probs: np.ndarray) -> None:
        """Store one finished chunk's layers, then flag the chunk done."""
        ys, xs = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
        try:
            for layer in self.layers:
                data = layer.encode(probs)
                array = self.array(layer.name)
                if array.ndim == 2:
                    array[ys, xs] = data[0]
                else:
                    array[:, ys, xs] = data
            self._array(DONE)[index] = 1
        except OSError as exc:
            raise write_failure(self.location.url, exc) from None

    @property
    def sealed(self) -> bool:
        return SEALED_KEY in self.group.attrs

    def done_chunks(self, chunk_grid: tuple[int, int]) -> set[tuple[int, int]]:
        """Chunks flagged done (every chunk of a sealed store)."""
        if self.sealed:
            return {(i, j) for i in range(chunk_grid[0]) for j in range(chunk_grid[1])}
        flags = self._array(DONE)[:]
        return {(int(i), int(j)) for i, j in np.argwhere(flags == 1)}

    def array(self, layer: str) -> zarr.Array:
        """The level-0 array of ``layer``."""
        return self._array(self.paths[layer])

    def _array(self, path: str) -> zarr.Array:
        array = self._arrays.get(path)
        if array is None:
            node = self.group[path]
            assert isinstance(node, zarr.Array)
            # Runtime settings are not stored with the array: a reopened array needs them again.
            array = self._arrays[path] = node.with_config(ARRAY_CONFIG)
        return array

    def seal(self, attributes: dict[str, Any]) -> None:
        """Turn the store into a finished Zarr output: drop the done flags and run record, set ``attributes``."""
        group = self.group
        attrs = {**dict(group.attrs), **attributes}
        if RUN_KEY in attrs:
            attrs[SEALED_KEY] = run_digest(attrs.pop(RUN_KEY))
        try:
            group.attrs.put(attrs)
            if DONE in group:
                del group[DONE]
        except OSError as exc:
            raise write_failure(self.location.url, exc) from None
        self._arrays.pop(DONE, None)


def run_digest(run: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()


def recorded_run(location: StoreLocation) -> dict[str, Any]:
    """What the run whose work store is at ``location`` recorded about itself; of a sealed store only the
    digest of that record (``{SEALED_KEY: …}``)."""
    try:
        attrs = dict(location.open_group(mode="r").attrs)
        if SEALED_KEY in attrs and RUN_KEY not in attrs:
            return {SEALED_KEY: attrs[SEALED_KEY]}
        return dict(attrs[RUN_KEY])
    except (OSError, KeyError, ValueError, zarr.errors.GroupNotFoundError) as exc:
        raise OutputError(f"cannot resume: {location} is not a readable tilewise work store ({exc})") from None


def store_disk_need(content: OutputContent, chunk: int, folder: Path, with_levels: bool) -> DiskNeed:
    """The work store's size at most (chunks stored whole, nothing compressed; a pyramid beside level 0 when
    ``with_levels``) and at least (one chunk file's headers per chunk)."""
    info = content.info
    rows, cols = -(-info.height // chunk), -(-info.width // chunk)
    upper = sum(layer.nbytes(rows * chunk, cols * chunk) for layer in content.layers)
    files = rows * cols * (len(content.layers) + 1)  # + the done flags
    if with_levels:
        upper, files = upper * 4 // 3, files * 4 // 3
    return DiskNeed(folder, upper + OVERHEAD, files * MIN_CHUNK_FILE, "the work store")
