"""The work store's own bookkeeping, one method at a time: what a resume compares, per-chunk tables and the
flags of the later passes (each a promise about what is on disk after a crash)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiling import OptionError
from tiling.instances.spec import InstanceSpec
from tiling.readers.base import RasterInfo
from tiling.writers import OutputContent, StoreLocation, WorkStore, output_layers
from tiling.writers.encode import OutputSpec

NAMES = ("background", "nucleus")


def _content() -> OutputContent:
    """A 64² run in four 32² chunks that writes labels and numbers objects of class 1 (two later passes)."""
    info = RasterInfo("mem", "test", 64, 64, 3, "uint8")
    return OutputContent(info, output_layers(OutputSpec("labels"), NAMES, 2), NAMES, InstanceSpec((1,)))


def _store(path: Path, run: dict[str, object]) -> WorkStore:
    return WorkStore.create(StoreLocation(str(path)), _content(), (32, 32), (2, 2), run, {}, {})


def test_a_resume_is_refused_when_a_setting_is_only_on_one_side(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _store(path, {"tile": 64})
    content, location = _content(), StoreLocation(str(path))
    # A setting the interrupted run did not record (or no longer records) is a change too.
    with pytest.raises(OptionError, match=r"\(overlap: was None, now 16\)$"):
        WorkStore.reopen(location, content, {"tile": 64, "overlap": 16}, {})
    with pytest.raises(OptionError, match=r"\(tile: was 64, now None\)$"):
        WorkStore.reopen(location, content, {}, {})
    with pytest.raises(OptionError, match=r"\(tile: was 64, now 128\)$"):
        WorkStore.reopen(location, content, {"tile": 128}, {})
    assert WorkStore.reopen(location, content, {"tile": 64}, {}).done_chunks((2, 2)) == set()


def test_a_table_written_again_replaces_the_first(tmp_path: Path) -> None:
    """A chunk that crashed after its table but before its flag writes its table again on resume."""
    store = _store(tmp_path / "s.zarr", {})
    store.put_table("pieces", (1, 0), {"area": np.array([5, 7]), "label": np.array([1, 2], np.uint32)})
    store.put_table("pieces", (1, 0), {"area": np.array([9])})
    table = store.get_table("pieces", (1, 0))
    assert list(table) == ["area"]
    np.testing.assert_array_equal(table["area"], [9])


def test_the_later_passes_flag_their_own_chunks(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr", {})
    assert store.flagged("objects") == set()
    store.flag("objects", (1, 0))
    store.flag("objects", (0, 1))
    store.flag("ids", (1, 1))
    assert store.flagged("objects") == {(1, 0), (0, 1)}
    assert store.flagged("ids") == {(1, 1)}
    assert store.done_chunks((2, 2)) == set()  # a later pass's flag is not the chunk's own
    reopened = WorkStore.reopen(StoreLocation(str(tmp_path / "s.zarr")), _content(), {}, {})
    assert reopened.flagged("objects") == {(1, 0), (0, 1)}
