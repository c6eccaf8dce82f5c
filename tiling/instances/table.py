"""The object table: one row per object, its measures in pixels and in the raster's own units.

Pixel coordinates are those of the full-resolution image (a slide's level 0, even when the run read a reduced
level or resampled it), so a viewer places them where they belong; the areas and centroids are also given in
µm (slides that state their pixel size) or map units (georeferenced scenes).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..errors import OptionError
from ..readers.base import RasterInfo
from ..writers.atomic import check_destination, commit, remove_path
from ..writers.write_errors import os_write_errors
from .passes import Objects

TABLE_SUFFIXES = (".csv", ".parquet")


def check_table_path(path: Path, overwrite: bool) -> None:
    """Refuse an unusable object-table destination before any work."""
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise OptionError(f"the object table must be a .csv or .parquet file, got {path.name}")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise OptionError("a .parquet object table needs pyarrow (pip install pyarrow); or write a .csv") from None
    check_destination(path, overwrite)


def object_columns(objects: Objects, class_names: tuple[str, ...], info: RasterInfo) -> dict[str, np.ndarray]:
    """The table's columns: ids, classes, areas, centroids, bounding boxes and mean probabilities."""
    m = objects.measures
    area = m.area.astype(np.float64)
    sy, sx = info.level0_scale
    row = m.sum_row / area + 0.5  # pixel centres, in the run's grid
    col = m.sum_col / area + 0.5
    columns: dict[str, np.ndarray] = {
        "id": objects.ids,
        "class_id": objects.classes.astype(np.int64),
        "class": np.array([_name(class_names, c) for c in objects.classes], dtype=object),
        "area_px": np.rint(area * sy * sx).astype(np.int64) if (sy, sx) != (1.0, 1.0) else m.area,
        "centroid_x_px": col * sx,
        "centroid_y_px": row * sy,
        "bbox_x0_px": np.rint(m.min_col * sx).astype(np.int64),
        "bbox_y0_px": np.rint(m.min_row * sy).astype(np.int64),
        "bbox_x1_px": np.rint((m.max_col + 1) * sx).astype(np.int64),
        "bbox_y1_px": np.rint((m.max_row + 1) * sy).astype(np.int64),
        "mean_probability": m.confidence / area / 254.0,
    }
    if info.pixel_size_um is not None:
        size_y, size_x = info.pixel_size_um
        columns.update(
            area_um2=area * size_y * size_x,
            centroid_x_um=col * size_x,
            centroid_y_um=row * size_y,
            mpp=np.full(len(objects), round(math.sqrt(size_x * size_y), 6)),
        )
    elif info.transform is not None:
        a, b, c, d, e, f = info.transform
        columns.update(
            area_map=area * abs(a * e - b * d), centroid_x=a * col + b * row + c, centroid_y=d * col + e * row + f
        )
    return columns


def _name(class_names: tuple[str, ...], value: int) -> str:
    return class_names[value] if value < len(class_names) else f"class {value}"


def write_object_table(path: Path, columns: dict[str, np.ndarray], overwrite: bool = False) -> Path:
    """Write ``columns`` as a CSV (or Parquet) table at ``path``, atomically."""
    check_table_path(path, overwrite)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        with os_write_errors(path):
            if path.suffix.lower() == ".parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({k: list(v) if v.dtype == object else v for k, v in columns.items()}), partial)
            else:
                _write_csv(partial, columns)
            commit(partial, path)
    except BaseException:
        remove_path(partial)
        raise
    return path


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    names = list(columns)
    formatted = [_formatted(columns[name]) for name in names]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(zip(*formatted, strict=True))


def _formatted(values: np.ndarray) -> list[object]:
    if values.dtype.kind == "f":
        return [f"{v:.10g}" for v in values.tolist()]
    return values.tolist()
