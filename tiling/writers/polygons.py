"""Polygons of a label or instance map: ``write_polygons(raster, dest, frame, …)`` → GeoPackage or GeoJSON, one
feature per 4-connected region of each value (a class's regions, or each object), in the run's coordinates.

The label raster is read window by window through the project's readers and polygonised with
``rasterio.features.shapes`` in *pixel* coordinates, which are whole numbers: pieces of one region cut by a
window border share their edges exactly, so ``shapely.unary_union`` joins them without slivers. Only the
pieces that touch an inner window border wait for that union; the others are written as they are found. The
``PolygonFrame`` is applied last: pixels to map coordinates for a georeferenced scene, to full-resolution
(level-0) pixels for a slide read at a reduced level, with areas in map units², µm² (slides that state their pixel
size) or pixels². Polygons smaller than ``min_area`` (in those units) are dropped after merging.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from ..readers import RasterInfo, open_raster
from .atomic import check_destination, commit, remove_path
from .encode import NODATA_UINT8, NODATA_UINT32
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
    """A polygon of the raster's ``value`` (a class, or an object's id) in pixel coordinates."""

    value: int
    polygon: Polygon


@dataclass(frozen=True)
class PolygonFrame:
    """Where polygons of the run's pixel grid go: ``to_output`` (shapely's affine: a, b, d, e, xoff, yoff) and
    what a unit of their area is worth in the reported units (``area_scale``, ``area_unit``)."""

    to_output: tuple[float, float, float, float, float, float]
    crs: str | None
    area_scale: float
    area_unit: str

    @classmethod
    def of(cls, info: RasterInfo) -> PolygonFrame:
        """Map coordinates for a georeferenced raster; level-0 pixels otherwise, areas in µm² when the pixel
        size is known."""
        if info.transform is not None:
            a, b, c, d, e, f = info.transform
            return cls((a, b, d, e, c, f), info.crs, 1.0, "map units²")
        sy, sx = info.level0_scale
        if info.pixel_size_um is not None:
            # Areas in µm²: output units (level-0 pixels) times the level-0 pixel's area.
            level0_um2 = (info.pixel_size_um[0] / sy) * (info.pixel_size_um[1] / sx)
            return cls((sx, 0.0, 0.0, sy, 0.0, 0.0), None, level0_um2, "µm²")
        return cls((sx, 0.0, 0.0, sy, 0.0, 0.0), None, 1.0, "pixels²")

    def place(self, polygon: Polygon) -> Polygon:
        """``polygon`` (run-grid pixels) in output coordinates, exterior counter-clockwise."""
        return orient(affine_transform(polygon, list(self.to_output)), 1.0)

    def area(self, polygon: Polygon) -> float:
        """The area of an output polygon in the reported units."""
        return float(polygon.area) * self.area_scale


def _windows(height: int, width: int, window: int) -> Iterator[tuple[Span, Span]]:
    for r in range(0, height, window):
        for c in range(0, width, window):
            yield Span(r, min(r + window, height)), Span(c, min(c + window, width))


def polygonise(
    path: str | os.PathLike[str], values: Iterable[int] | None = None, window: int = WINDOW
) -> Iterator[Piece]:
    """Every 4-connected region of each value of the label or instance raster at ``path``, in pixel coordinates,
    merged across window borders. ``values`` limits the values (default: all but 0, the background); nodata
    is never one."""
    reader = open_raster(path, bands=[1])
    try:
        height, width = reader.info.height, reader.info.width
        wanted = None if values is None else set(values)
        nodata = NODATA_UINT32 if reader.info.dtype == "uint32" else NODATA_UINT8
        pending: dict[int, list[Polygon]] = defaultdict(list)
        for rows, cols in _windows(height, width, window):
            data, valid = reader.read(rows, cols)
            keep = valid & (data[0] != nodata)
            keep &= data[0] != 0 if wanted is None else np.isin(data[0], list(wanted))
            labels = data[0].astype(np.int32)  # what rasterio's shapes takes (ids stay below 2**31)
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


Fields = dict[str, Any]


def write_polygons(
    raster: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    frame: PolygonFrame,
    schema: dict[str, str],
    describe: Callable[[int, float], Fields | None],
    values: Iterable[int] | None = None,
    window: int = WINDOW,
    overwrite: bool = False,
) -> int:
    """Write the polygons of ``raster`` to ``dest`` (.gpkg or .geojson) in ``frame``'s coordinates; returns the
    number written. ``describe(value, area)`` gives each polygon's fields (named and typed as in ``schema``:
    name → numpy dtype), or None to drop it."""
    dest = Path(dest)
    driver = vector_driver(dest)
    check_destination(dest, overwrite)
    partial = vector_partial(dest)
    remove_path(partial)
    # pyogrio carries its own GDAL beside rasterio's: load it only when polygons are asked for.
    import pyogrio.errors
    import pyogrio.raw

    written = 0
    batch: list[tuple[Fields, Polygon]] = []

    def flush() -> None:
        nonlocal written
        if not batch and written:
            return
        columns = [np.array([fields[name] for fields, _ in batch], dtype=dtype) for name, dtype in schema.items()]
        geometries = np.array([p for _, p in batch], dtype=object)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GDAL's notes on an empty first batch
            pyogrio.raw.write(
                partial,
                shapely.to_wkb(geometries) if len(batch) else np.array([], dtype=object),
                columns,
                fields=list(schema),
                layer=LAYER,
                driver=driver,
                geometry_type="Polygon",
                crs=frame.crs,
                append=written > 0,
            )
        written += len(batch)
        batch.clear()

    try:
        for piece in polygonise(raster, values, window):
            polygon = frame.place(piece.polygon)
            fields = describe(piece.value, frame.area(polygon))
            if fields is None:
                continue
            batch.append((fields, polygon))
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


#: The fields of a class region's polygon.
CLASS_REGION_SCHEMA = {"class": "int32", "class_name": "object", "area": "float64"}


def class_regions(class_names: tuple[str, ...], min_area: float) -> Callable[[int, float], Fields | None]:
    """Fields of a class region's polygon (class, its name, area); regions under ``min_area`` dropped."""

    def describe(value: int, area: float) -> Fields | None:
        if area < min_area:
            return None
        return {
            "class": value,
            "class_name": class_names[value] if value < len(class_names) else str(value),
            "area": area,
        }

    return describe


def _vector_write_failure(dest: Path, error: BaseException) -> WriteFailure:
    """What a failed write of polygons to ``dest`` says: pyogrio's GDAL reports a full disk only as text."""
    code = getattr(error, "errno", None) or named_errno(str(error))
    quiet = code in (errno.ENOSPC, errno.EFBIG)
    return WriteFailure(dest, code, "" if quiet else " ".join(str(error).split()) or type(error).__name__)
