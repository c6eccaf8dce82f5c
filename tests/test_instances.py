"""Objects from a class map: the chunked passes against a whole-image reference written independently here, the
measures against the raster, and the paper-style rule (seeds, then boundary pixels joining the nearest seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pipeline.objects import TaskRunner, find_objects
from tiling import ChunkPlan, TileGrid
from tiling.instances import InstanceSpec
from tiling.instances.passes import chunk_indices
from tiling.readers.base import RasterInfo
from tiling.writers import OutputContent, StoreLocation, WorkStore, output_layers
from tiling.writers.encode import NODATA_UINT32, OutputSpec

CROSS = ndimage.generate_binary_structure(2, 1)


def reference(classes: np.ndarray, spec: InstanceSpec) -> np.ndarray:
    """Instance ids of a whole class map, pixel by pixel: 4-connected regions of each object class, boundary
    pixels joining the adjacent object with the earliest first seed pixel, one ring at a time, then ids in raster
    order of each object's first pixel. No code of the passes is used."""
    height, width = classes.shape
    keys = np.zeros(classes.shape, np.int64)
    for value in spec.object_classes:
        labels, count = ndimage.label(classes == value, structure=CROSS)
        for label in range(1, count + 1):
            ys, xs = np.nonzero(labels == label)
            keys[ys, xs] = (ys * width + xs).min() + 1
    for _ in range(spec.radius):
        before = keys.copy()
        for y in range(height):
            for x in range(width):
                if before[y, x] or classes[y, x] not in spec.growth_classes:
                    continue
                around = [
                    before[y + dy, x + dx]
                    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                    if 0 <= y + dy < height and 0 <= x + dx < width and before[y + dy, x + dx]
                ]
                if around:
                    keys[y, x] = min(around)
    ids = np.zeros(classes.shape, np.uint32)
    firsts = sorted((int(np.flatnonzero(keys.ravel() == k)[0]), k) for k in np.unique(keys) if k)
    for number, (_, key) in enumerate(firsts, start=1):
        ids[keys == key] = number
    ids[classes == 255] = NODATA_UINT32
    return ids


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A class map of touching blobs: interiors (1) ringed by boundaries (2), some merged, a few nodata pixels."""
    rng = np.random.default_rng(seed)
    classes = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(shape[0] * shape[1] // 120):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.uniform(2, 7)
        d = np.hypot(yy - cy, xx - cx)
        classes[(d <= r + 1.5) & (classes == 0)] = 2
        classes[d <= r] = 1
    classes[rng.random(shape) < 0.003] = 255
    return classes


def run_passes(classes: np.ndarray, spec: InstanceSpec, chunk: tuple[int, int], folder: Path):
    """Write ``classes`` chunk by chunk into a work store as a run would (one-hot probabilities), then run the
    instance passes; returns the instance raster and the objects."""
    height, width = classes.shape
    names = ("background", "nucleus", "boundary")
    spec_out = OutputSpec("labels,instances")
    info = RasterInfo("mem", "test", height, width, 3, "uint8")
    content = OutputContent(info, output_layers(spec_out, names, 3), names, spec, 0.5)
    chunks = ChunkPlan(TileGrid(height, width, 8, 0), chunk)
    location = StoreLocation(str(folder / f"store-{chunk[0]}x{chunk[1]}.zarr"))
    store = WorkStore.create(
        location, content, chunk, chunks.shape, {}, {}, {"labels": "labels", "instances": "instances"}
    )
    for i, j in chunk_indices(chunks):
        rows, cols = chunks.rows.span(i), chunks.cols.span(j)
        block = classes[rows.start : rows.stop, cols.start : cols.stop]
        probs = np.stack([(block == k).astype(np.float32) for k in range(3)])
        probs[:, block == 255] = np.nan
        store.write((i, j), rows, cols, probs)
    objects = find_objects(store, chunks, TaskRunner(workers=2))
    return np.asarray(store.array("instances")[:]), objects


@pytest.mark.parametrize("chunk", [(61, 77), (16, 16), (23, 40), (7, 9)])
def test_chunked_passes_equal_the_whole_image_reference(tmp_path: Path, chunk: tuple[int, int]) -> None:
    classes = blobs((61, 77), seed=3)
    spec = InstanceSpec((1,), (2,), radius=2)
    ids, objects = run_passes(classes, spec, chunk, tmp_path)
    expected = reference(classes, spec)
    np.testing.assert_array_equal(ids, expected)
    assert len(objects) == int(expected[expected != NODATA_UINT32].max())
    # Objects cross chunk corners at these chunk sizes: some object's bounding box spans two chunk rows and cols.
    if chunk == (7, 9):
        m = objects.measures
        assert ((m.min_row // 7 != m.max_row // 7) & (m.min_col // 9 != m.max_col // 9)).any()


def test_components_without_growth(tmp_path: Path) -> None:
    classes = np.array(
        [
            [1, 1, 0, 2, 2],
            [0, 1, 0, 2, 0],
            [1, 0, 1, 0, 2],
        ],
        np.uint8,
    )
    ids, objects = run_passes(classes, InstanceSpec((1, 2)), (2, 2), tmp_path)
    # 4-connected regions of each class, numbered by their first pixel: corners do not connect.
    np.testing.assert_array_equal(ids, [[1, 1, 0, 2, 2], [0, 1, 0, 2, 0], [3, 0, 4, 0, 5]])
    assert objects.classes.tolist() == [1, 2, 1, 1, 2]


def test_objects_under_the_smallest_area_are_dropped_and_the_rest_renumbered(tmp_path: Path) -> None:
    classes = blobs((61, 77), seed=3)
    spec = InstanceSpec((1,), (2,), radius=2)
    all_ids, everything = run_passes(classes, spec, (16, 16), tmp_path / "all")
    smallest = int(np.median(everything.measures.area))  # about half the objects fall under it
    ids, kept = run_passes(classes, InstanceSpec((1,), (2,), radius=2, min_area=smallest), (16, 16), tmp_path / "kept")
    large = everything.measures.area >= smallest
    assert 0 < len(kept) == int(large.sum()) < len(everything)
    np.testing.assert_array_equal(np.unique(ids[(ids > 0) & (ids != NODATA_UINT32)]), np.arange(1, len(kept) + 1))
    small = np.isin(all_ids, everything.ids[~large])
    assert (ids[small] == 0).all()  # fragments became background
    assert ((ids > 0) == ((all_ids > 0) & ~small)).all()


def test_measures_equal_the_raster(tmp_path: Path) -> None:
    classes = blobs((50, 64), seed=8)
    ids, objects = run_passes(classes, InstanceSpec((1,), (2,), radius=2), (13, 17), tmp_path)
    m = objects.measures
    for index, number in enumerate(objects.ids[:40]):
        ys, xs = np.nonzero(ids == number)
        assert m.area[index] == ys.size
        assert (m.min_row[index], m.max_row[index], m.min_col[index], m.max_col[index]) == (
            ys.min(),
            ys.max(),
            xs.min(),
            xs.max(),
        )
        assert m.sum_row[index] == ys.sum() and m.sum_col[index] == xs.sum()
        assert m.first[index] == ys[0] * 64 + xs[0]  # np.nonzero is in raster order
        assert m.confidence[index] == 254 * ys.size  # one-hot probabilities: confidence 1 everywhere


def test_growth_reaches_no_further_than_the_radius() -> None:
    from tiling.instances.growth import grow

    keys = np.zeros((1, 7), np.int64)
    keys[0, 0], keys[0, 6] = 5, 3
    grown = grow(keys, np.ones((1, 7), bool), radius=2)
    np.testing.assert_array_equal(grown, [[5, 5, 5, 0, 3, 3, 3]])
    # A pixel reached by two objects at the same step joins the one with the smaller key.
    keys = np.array([[5, 0, 3]], np.int64)
    np.testing.assert_array_equal(grow(keys, np.ones((1, 3), bool), radius=1), [[5, 3, 3]])
