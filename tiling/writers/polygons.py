"""Polygons of a label map: ``write_polygons(labels, dest)`` → GeoPackage or GeoJSON, one feature per connected
region (4-connected) of each class, in the raster's CRS.

The label raster is read window by window through the project's readers and polygonised with
``rasterio.features.shapes`` in *pixel* coordinates, which are whole numbers: pieces of one region cut by a
window border share their edges exactly, so ``shapely.unary_union`` joins them without slivers. Only the
pieces that touch an inner window border wait for that union; the others are written as they are found. The
pixel → map transform is applied last. Polygons smaller than ``min_area`` (in map units², or pixels² for a
raster without georeferencing) are dropped after merging.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from shapely.affinity import affine_transform
from shapely.geometry import Polygon
from shapely.geometry import shape as to_shape
from shapely.geometry.polygon import orient

from ..errors import OptionError, WriteFailure
from ..plan import Span
from ..readers import open_raster
from .atomic import check_destination, commit, remove_path
from .encode import NODATA_UINT8
from .write_errors import named_errno

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
#: Side of the windows the label raster is polygonised in.
WINDOW = 2048
#: Features written per call to the vector driver.
BATCH = 4096
LAYER = "polygons"


def vector_driver(path: Path) -> str:
    driver = DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise OptionError(f"cannot tell the vector format of {path.name} (use a .gpkg or .geojson name)")
    return driver


def vector_partial(final: Path) -> Path:
    """Where polygons are written until complete; keeps the suffix, which the GeoPackage driver checks."""
    return final.with_name(f"{final.stem}.partial{final.suffix}")


@dataclass(frozen=True)
class Piece:
    """A polygon of class ``value`` in pixel coordinates."""

    value: int
    polygon: Polygon


def _windows(height: int, width: int, window: int) -> Iterator[tuple[Span, Span]]:
    for r in range(0, height, window):
        for c in range(0, width, window):
            yield Span(r, min(r + window, height)), Span(c, min(c + window, width))


def polygonise(
    path: str | os.PathLike[str], classes: Iterable[int] | None = None, window: int = WINDOW
) -> Iterator[Piece]:
    """Every 4-connected region of each class of the label raster at ``path``, in pixel coordinates, merged
    across window borders. ``classes`` limits the classes (default: all but 0, the background); nodata (255)
    is never a class."""
    reader = open_raster(path, bands=[1])
    try:
        height, width = reader.info.height, reader.info.width
        wanted = None if classes is None else set(classes)
        pending: dict[int, list[Polygon]] = defaultdict(list)
        for rows, cols in _windows(height, width, window):
            data, valid = reader.read(rows, cols)
            labels = data[0].astype(np.uint8)
            keep = valid & (labels != NODATA_UINT8)
            keep &= labels != 0 if wanted is None else np.isin(labels, list(wanted))
            if not keep.any():
                continue
            offset = Affine.translation(cols.start, rows.start)
            for geometry, value in shapes(labels, mask=keep, connectivity=4, transform=offset):
                polygon = to_shape(geometry)
                minx, miny, maxx, maxy = polygon.bounds
                cut = (
                    (minx == cols.start > 0)
                    or (maxx == cols.stop < width)
                    or (miny == rows.start > 0)
                    or (maxy == rows.stop < height)
                )
                if cut:
                    pending[int(value)].append(polygon)
                else:
                    yield Piece(int(value), polygon)
        for value, pieces in sorted(pending.items()):
            merged = shapely.unary_union(pieces)
            for polygon in getattr(merged, "geoms", [merged]):
                yield Piece(value, polygon)
    finally:
        reader.close()


def write_polygons(
    labels: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    class_names: tuple[str, ...],
    min_area: float = 0.0,
    classes: Iterable[int] | None = None,
    window: int = WINDOW,
    overwrite: bool = False,
) -> int:
    """Write the polygons of the label raster ``labels`` to ``dest`` (.gpkg or .geojson) in the raster's CRS
    (pixel coordinates when it has none); returns the number of polygons written. Each feature has the class
    number, its name and its area."""
    dest = Path(dest)
    driver = vector_driver(dest)
    check_destination(dest, overwrite)
    reader = open_raster(labels, bands=[1])
    info = reader.info
    reader.close()
    a, b, c, d, e, f = info.transform or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    to_map = [a, b, d, e, c, f]
    partial = vector_partial(dest)
    remove_path(partial)
    # pyogrio carries its own GDAL beside rasterio's: load it only when polygons are asked for.
    import pyogrio.errors
    import pyogrio.raw

    written = 0
    batch: list[tuple[int, Polygon]] = []

    def flush() -> None:
        nonlocal written
        if not batch and written:
            return
        values = np.array([v for v, _ in batch], dtype=np.int32)
        names = np.array([class_names[v] if v < len(class_names) else str(v) for v, _ in batch], dtype=object)
        geometries = np.array([p for _, p in batch], dtype=object)
        areas = shapely.area(geometries).astype(np.float64) if len(batch) else np.zeros(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GDAL's notes on an empty first batch
            pyogrio.raw.write(
                partial,
                shapely.to_wkb(geometries) if len(batch) else np.array([], dtype=object),
                [values, names, areas],
                fields=["class", "class_name", "area"],
                layer=LAYER,
                driver=driver,
                geometry_type="Polygon",
                crs=info.crs,
                append=written > 0,
            )
        written += len(batch)
        batch.clear()

    try:
        for piece in polygonise(labels, classes, window):
            polygon = orient(affine_transform(piece.polygon, to_map), 1.0)
            if polygon.area < min_area:
                continue
            batch.append((piece.value, polygon))
            if len(batch) >= BATCH:
                flush()
        flush()
        commit(partial, dest)
    except BaseException as exc:
        remove_path(partial)
        if isinstance(exc, OSError | pyogrio.errors.DataSourceError | pyogrio.errors.DataLayerError):
            raise _vector_write_failure(dest, exc) from None
        raise
    return written


def _vector_write_failure(dest: Path, error: BaseException) -> WriteFailure:
    """What a failed write of polygons to ``dest`` says: pyogrio's GDAL reports a full disk only as text."""
    code = getattr(error, "errno", None) or named_errno(str(error))
    quiet = code in (errno.ENOSPC, errno.EFBIG)
    return WriteFailure(dest, code, "" if quiet else " ".join(str(error).split()) or type(error).__name__)
