"""The work store's own bookkeeping, one method at a time: what a resume compares, per-chunk tables and the
flags of the later passes (each a promise about what is on disk after a crash)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from tiling import OptionError
from tiling.errors import OutputError
from tiling.instances.spec import InstanceSpec
from tiling.readers.base import RasterInfo
from tiling.writers import OutputContent, StoreLocation, WorkStore, output_layers
from tiling.writers.disk import MIN_CHUNK_FILE, OVERHEAD
from tiling.writers.encode import OutputSpec
from tiling.writers.workstore import SEALED_KEY, WORK, recorded_run, run_digest, store_disk_need

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


def test_a_refusal_names_the_first_four_changes_in_order(tmp_path: Path) -> None:
    run = {key: 1 for key in "abcdef"}
    _store(tmp_path / "s.zarr", run)
    changed = {**run, **{key: 2 for key in "edcba"}}
    with pytest.raises(OptionError) as refused:
        WorkStore.reopen(StoreLocation(str(tmp_path / "s.zarr")), _content(), changed, {})
    assert str(refused.value).endswith("(a: was 1, now 2; b: was 1, now 2; c: was 1, now 2; d: was 1, now 2)")


def test_a_sealed_store_keeps_the_outputs_and_only_the_digest_of_its_run(tmp_path: Path) -> None:
    path, run = tmp_path / "s.zarr", {"tile": 64, "overlap": 16}
    _store(path, run)
    location = StoreLocation(str(path))
    store = WorkStore.reopen(location, _content(), run, {})  # a fresh handle: it never opened the done flags
    store.seal({"software": "tilewise"})
    group = zarr.open_group(str(path), mode="r")
    assert "labels" in group and "done" not in group and WORK not in group  # nothing of the run's own left
    assert dict(group.attrs) == {"software": "tilewise", SEALED_KEY: run_digest(run)}
    assert recorded_run(location) == {SEALED_KEY: run_digest(run)}
    assert store.sealed and store.done_chunks((2, 2)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # A sealed store whose move into place failed resumes for the same run only.
    assert WorkStore.reopen(location, _content(), dict(reversed(run.items())), {}).sealed
    with pytest.raises(OptionError, match="finished output of a different run"):
        WorkStore.reopen(location, _content(), {**run, "tile": 128}, {})


def test_a_run_s_digest_depends_on_its_values_not_on_their_order() -> None:
    assert run_digest({"a": 1, "b": [2, 3]}) == run_digest({"b": [2, 3], "a": 1})
    assert run_digest({"a": 1}) != run_digest({"a": 2}) != run_digest({})


def test_a_table_holding_pickled_objects_is_refused(tmp_path: Path) -> None:
    """A work store is data: a tampered table must not run code when read back."""
    store = _store(tmp_path / "s.zarr", {})
    store.put_table("objects", (0, 0), {"payload": np.array([{"any": "object"}], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        store.get_table("objects", (0, 0))


@pytest.mark.parametrize("with_levels", [False, True])
def test_the_work_store_s_disk_need_counts_every_chunk_whole(tmp_path: Path, with_levels: bool) -> None:
    """A 100 × 70 raster in 32-px chunks is 4 × 3 chunks of 32² (the last ones stored whole): labels (uint8) and
    the objects' confidence (uint8), seeds and rows (uint32) are 10 bytes per pixel; a chunk file per layer,
    per done flag and per later pass."""
    info = RasterInfo("mem", "test", 100, 70, 3, "uint8")
    content = OutputContent(info, output_layers(OutputSpec("labels"), NAMES, 2), NAMES, InstanceSpec((1,)))
    need = store_disk_need(content, 32, tmp_path, with_levels)
    upper, files = 4 * 32 * 3 * 32 * 10, 4 * 3 * (4 + 1 + 2)
    if with_levels:
        upper, files = upper * 4 // 3, files * 4 // 3
    assert (need.folder, need.upper, need.lower, need.what) == (
        tmp_path,
        upper + OVERHEAD,
        files * MIN_CHUNK_FILE,
        "the work store",
    )


def test_a_store_that_cannot_be_made_names_the_place_and_the_cause(tmp_path: Path) -> None:
    from tiling.errors import WriteFailure

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteFailure) as failed:
        _store(blocker / "s.zarr", {"tile": 64})
    message = str(failed.value)
    assert str(blocker / "s.zarr") in message and "not a directory" in message.lower(), message


def test_resuming_from_a_folder_that_is_no_work_store_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(OutputError, match=r"cannot resume: .*empty\.zarr is not a readable"):
        recorded_run(StoreLocation(str(empty)))
