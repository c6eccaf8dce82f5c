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
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import OptionError, OutputError, write_failure
from ..instances.first_pass import first_pass
from ..plan import Span
from .disk import MIN_CHUNK_FILE, OVERHEAD, DiskNeed
from .encode import to_confidence
from .layers import Layer
from .location import StoreLocation

if TYPE_CHECKING:
    from ..instances.spec import InstanceSpec
    from .formats import OutputContent

RUN_KEY = "tilewise_run"
#: The group of what a run keeps only while it runs: the layers its outputs are made from, per-chunk tables and
#: the flags of its later passes (dropped when a Zarr output is sealed).
WORK = "_work"
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
        #: Every layer the store holds: the outputs', then those the outputs are made from.
        self.layers = layers
        #: Where each layer's level-0 array sits in the group (format-specific: OME-Zarr wants NGFF paths).
        self.paths = paths
        #: How objects are found in the label map, when the run writes instances (see ``tiling.instances``).
        self.instances: InstanceSpec | None = None
        self._group: zarr.Group | None = None
        #: Arrays by path, opened once per process (opening one reads its metadata from the store).
        self._arrays: dict[str, zarr.Array] = {}

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = self.location.open_group(mode="r+")
        return self._group

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_group": None, "_arrays": {}}

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
        paths = {
            **{layer.name: layer.name for layer in content.layers},
            **paths,
            **{layer.name: f"{WORK}/{layer.name}" for layer in content.work_layers},
        }
        try:
            group = location.open_group(mode="w", zarr_format=3, attributes={**attributes, RUN_KEY: run})
            for layer in (*content.layers, *content.work_layers):
                parent, _, name = paths[layer.name].rpartition("/")
                (group.require_group(parent) if parent else group).create_array(
                    name,
                    shape=layer.shape(info.height, info.width),
                    chunks=chunk if layer.is_map else (layer.count, *chunk),
                    dtype=layer.dtype,
                    fill_value=layer.nodata,
                    compressors=COMPRESSORS,
                    dimension_names=("y", "x") if layer.is_map else ("band", "y", "x"),
                    attributes={
                        "nodata": None if np.isnan(layer.nodata) else layer.nodata,
                        "band_names": list(layer.band_names),
                        # Each array carries its georeferencing, so it can be read on its own.
                        "crs": info.crs,
                        "transform": list(info.transform) if info.transform else None,
                    },
                )
            group.create_array(DONE, shape=chunk_grid, chunks=(1, 1), dtype="uint8", fill_value=0)
            work = group.require_group(WORK)
            for stage in content.later_passes:
                work.create_array(f"{DONE}_{stage}", shape=chunk_grid, chunks=(1, 1), dtype="uint8", fill_value=0)
            for table in content.tables:  # made here: chunk tasks on several threads add their tables to them
                work.require_group(table)
        except OSError as exc:
            raise write_failure(location.url, exc) from None
        store = cls(location, (*content.layers, *content.work_layers), paths)
        store.instances = content.instances
        store._group = group
        return store

    @classmethod
    def reopen(
        cls, location: StoreLocation, content: OutputContent, run: dict[str, Any], paths: dict[str, str]
    ) -> WorkStore:
        """The store of an interrupted run, if it was the same run; otherwise an error naming what changed."""
        recorded = recorded_run(location)
        if SEALED_KEY in recorded:  # finished and sealed; only its move into place failed
            if recorded[SEALED_KEY] != run_digest(run):
                raise OptionError(f"cannot resume: {location} holds the finished output of a different run")
        else:
            changed = sorted(k for k in set(recorded) | set(run) if recorded.get(k) != run.get(k))
            if changed:
                details = "; ".join(f"{k}: was {recorded.get(k)!r}, now {run.get(k)!r}" for k in changed[:4])
                raise OptionError(f"cannot resume: the input or settings changed since the interrupted run ({details})")
        paths = {**paths, **{layer.name: f"{WORK}/{layer.name}" for layer in content.work_layers}}
        store = cls(location, (*content.layers, *content.work_layers), paths)
        store.instances = content.instances
        return store

    def write(self, index: tuple[int, int], rows: Span, cols: Span, probs: np.ndarray) -> None:
        """Store one finished chunk's layers (and, when the run finds objects, the chunk's seeds), then flag the
        chunk done."""
        try:
            encoded = {}
            for layer in self.layers:
                if layer.from_probs:
                    encoded[layer.name] = layer.encode(probs)
                    self.put(layer.name, rows, cols, encoded[layer.name])
            if self.instances is not None:
                labels = encoded["labels"][0]
                threshold = next(layer.threshold for layer in self.layers if layer.is_labels)
                first_pass(self, index, rows, cols, labels, to_confidence(probs, threshold))
            self._array(DONE)[index] = 1
        except OSError as exc:
            raise write_failure(self.location.url, exc) from None

    def put(self, layer: str, rows: Span, cols: Span, data: np.ndarray) -> None:
        """Write ``data`` ((count, rows, cols), or (rows, cols) for a map) into ``layer`` at ``rows`` × ``cols``."""
        array = self.array(layer)
        ys, xs = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
        if array.ndim == 2:
            array[ys, xs] = data[0] if data.ndim == 3 else data
        else:
            array[:, ys, xs] = data

    def get(self, layer: str, rows: Span, cols: Span) -> np.ndarray:
        """``layer`` under ``rows`` × ``cols``."""
        return np.asarray(self.array(layer)[..., rows.start : rows.stop, cols.start : cols.stop])

    def put_table(self, name: str, index: tuple[int, int], columns: dict[str, np.ndarray]) -> None:
        """Keep a chunk's named arrays (a table's columns, a chunk's edge strips) under ``name``; rewriting them
        replaces them. They are stored as one array holding their ``.npz`` bytes: a run keeps two such tables per
        chunk, and one small array each writes far fewer files than an array per column."""
        payload = io.BytesIO()
        np.savez(payload, **{column: np.asarray(data) for column, data in columns.items()})
        data = np.frombuffer(payload.getvalue(), dtype=np.uint8)
        tables = self.group[f"{WORK}/{name}"]
        assert isinstance(tables, zarr.Group)
        tables.create_array(f"{index[0]}_{index[1]}", data=data, chunks=data.shape, overwrite=True)

    def get_table(self, name: str, index: tuple[int, int]) -> dict[str, np.ndarray]:
        payload = np.asarray(self.group[f"{WORK}/{name}/{index[0]}_{index[1]}"][:])
        with np.load(io.BytesIO(payload.tobytes()), allow_pickle=False) as arrays:
            return {column: arrays[column] for column in arrays.files}

    def flag(self, stage: str, index: tuple[int, int]) -> None:
        """Flag a chunk done with a later pass ``stage`` (after its data and table are written)."""
        self._array(f"{WORK}/{DONE}_{stage}")[index] = 1

    def flagged(self, stage: str) -> set[tuple[int, int]]:
        flags = self._array(f"{WORK}/{DONE}_{stage}")[:]
        return {(int(i), int(j)) for i, j in np.argwhere(flags == 1)}

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
        """Turn the store into a finished Zarr output: drop the done flags, what only the run needed and the run
        record, set ``attributes``."""
        group = self.group
        attrs = {**dict(group.attrs), **attributes}
        if RUN_KEY in attrs:
            attrs[SEALED_KEY] = run_digest(attrs.pop(RUN_KEY))
        try:
            group.attrs.put(attrs)
            for name in (DONE, WORK):
                if name in group:
                    del group[name]
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
        if SEALED_KEY in attrs:  # sealing replaced the record by its digest
            return {SEALED_KEY: attrs[SEALED_KEY]}
        return dict(attrs[RUN_KEY])
    except (OSError, KeyError, ValueError, zarr.errors.GroupNotFoundError) as exc:
        raise OutputError(f"cannot resume: {location} is not a readable tilewise work store ({exc})") from None


def store_disk_need(content: OutputContent, chunk: int, folder: Path, with_levels: bool) -> DiskNeed:
    """The work store's size at most (chunks stored whole, nothing compressed; a pyramid beside level 0 when
    ``with_levels``) and at least (one chunk file's headers per chunk)."""
    info = content.info
    rows, cols = -(-info.height // chunk), -(-info.width // chunk)
    layers = (*content.layers, *content.work_layers)
    upper = sum(layer.nbytes(rows * chunk, cols * chunk) for layer in layers)
    files = rows * cols * (len(layers) + 1 + len(content.later_passes))  # + the done flags
    if with_levels:
        upper, files = upper * 4 // 3, files * 4 // 3
    return DiskNeed(folder, upper + OVERHEAD, files * MIN_CHUNK_FILE, "the work store")
