"""What a run makes from its written output besides the rasters: the ``--preview`` PNG, ``--vector`` polygons
and the ``--objects`` table.

The preview and polygons read the label or instance map back from the committed output (not from memory), so
they work at any raster size. Polygons are one per object when the run writes instances, else one per region
of a class; plain GIS features or QuPath detections (``--vector-style``), in map coordinates or, for a slide,
its full-resolution pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiling.errors import OptionError
from tiling.instances.passes import Objects
from tiling.instances.table import check_table_path, object_columns, write_object_table
from tiling.storage import StoragePath, is_remote
from tiling.writers import Destination
from tiling.writers.atomic import check_destination
from tiling.writers.geotiff import PALETTE
from tiling.writers.polygons import CLASS_REGION_SCHEMA, PolygonFrame, class_regions, vector_driver, write_polygons
from tiling.writers.preview import write_preview
from tiling.writers.qupath import Detection, write_qupath

from .options import PredictOptions

if TYPE_CHECKING:
    from .run_plan import RunPlan


@dataclass
class Products:
    #: Paths, or the URLs of products written to object storage.
    paths: list[Path | str] = field(default_factory=list)
    polygons: int | None = None


#: The products a run may write, by option name.
PRODUCTS = ("preview", "vector", "objects")


def check_products(opts: PredictOptions, output: Path) -> None:
    """Refuse unusable product destinations before any work (like the raster outputs)."""
    for name in PRODUCTS:
        path = getattr(opts, name)
        if path is None:
            continue
        if is_remote(path):
            Destination.of(path, opts.scratch_dir).check_remote([StoragePath(path).name], opts.overwrite)
            continue
        if Path(path).resolve() == output.resolve():
            raise OptionError(f"the {name} {path} would overwrite the output")
        check_destination(Path(path), opts.overwrite)
    if opts.vector:
        if opts.vector_style == "qupath" and not opts.vector.lower().endswith((".geojson", ".json")):
            raise OptionError("QuPath reads GeoJSON: give --vector a .geojson name with --vector-style qupath")
        vector_driver(Path(opts.vector))
    if opts.objects and not is_remote(opts.objects):
        check_table_path(Path(opts.objects), opts.overwrite)


def write_products(opts: PredictOptions, plan: RunPlan, objects: Objects | None) -> Products:
    """The preview, the polygons and the object table of a run whose outputs are written; those named by URL
    are written in the scratch folder, then uploaded."""
    remote = {
        name: Destination.of(getattr(opts, name), opts.scratch_dir)
        for name in PRODUCTS
        if getattr(opts, name) and is_remote(getattr(opts, name))
    }
    if not remote:
        return _write_products(opts, plan, objects)
    try:
        for destination in remote.values():
            assert destination.scratch is not None
            destination.scratch.mkdir(parents=True)
        local = opts.updated(**{name: str(d.assembly_path) for name, d in remote.items()})
        products = _write_products(local, plan, objects)
        urls = {d.assembly_path: d for d in remote.values()}
        for destination in remote.values():
            destination.publish([destination.assembly_path])
        products.paths = [urls[p].target.text if p in urls else p for p in products.paths]
        return products
    finally:
        for destination in remote.values():
            destination.discard()


def _write_products(opts: PredictOptions, plan: RunPlan, objects: Objects | None) -> Products:
    assert plan.output is not None
    fmt, class_names = plan.output.format, plan.card.class_names
    products = Products()
    labels, instances = fmt.layer_raster("labels"), fmt.layer_raster("instances")
    if opts.preview:
        size = opts.preview_size
        preview = write_preview(
            opts.preview, plan.reader, labels, plan.mask, class_names, size, opts.overwrite, instances=instances
        )
        products.paths.append(preview)
    table = object_columns(objects, class_names, plan.reader.info) if objects is not None else None
    if opts.vector:
        products.polygons = _write_vector(opts, plan, labels, instances, table)
        products.paths.append(Path(opts.vector))
    if opts.objects and table is not None:
        products.paths.append(write_object_table(Path(opts.objects), table, opts.overwrite))
    return products


def _write_vector(
    opts: PredictOptions,
    plan: RunPlan,
    labels: Path | None,
    instances: Path | None,
    table: dict[str, np.ndarray] | None,
) -> int:
    """One polygon per object when the run wrote instances, else one per class region."""
    assert opts.vector is not None
    frame = PolygonFrame.of(plan.reader.info)
    class_names = plan.card.class_names
    common: dict[str, Any] = {"frame": frame, "overwrite": opts.overwrite}
    if instances is not None and table is not None:
        rows = _ObjectRows(table, opts.min_area)
        if opts.vector_style == "qupath":
            return write_qupath(instances, opts.vector, describe=rows.detection, **common)
        return write_polygons(instances, opts.vector, schema=rows.schema, describe=rows.fields, **common)
    if labels is None:
        raise OptionError("polygons are made from the label or instance map: add labels or instances to --output-kind")
    values = opts.vector_classes
    if opts.vector_style == "qupath":
        describe = _region_detections(class_names, frame.area_unit, opts.min_area)
        return write_qupath(labels, opts.vector, describe=describe, values=values, **common)
    regions = class_regions(class_names, opts.min_area)
    return write_polygons(labels, opts.vector, schema=CLASS_REGION_SCHEMA, describe=regions, values=values, **common)


def _colour(value: int) -> tuple[int, int, int]:
    return PALETTE[value % len(PALETTE)]


def _region_detections(
    class_names: tuple[str, ...], unit: str, min_area: float
) -> Callable[[int, float], Detection | None]:
    def describe(value: int, area: float) -> Detection | None:
        if area < min_area:
            return None
        name = class_names[value] if value < len(class_names) else f"class {value}"
        return Detection(name, _colour(value), {f"Area {unit}": area})

    return describe


class _ObjectRows:
    """The object table's row of a polygon's object (ids are 1..N, so row ``id - 1``)."""

    def __init__(self, table: dict[str, np.ndarray], min_area: float) -> None:
        self.table, self.min_area = table, min_area
        self.schema = {name: "object" if column.dtype == object else column.dtype.str for name, column in table.items()}

    def fields(self, value: int, area: float) -> dict[str, Any] | None:
        if area < self.min_area:
            return None
        return {name: column[value - 1] for name, column in self.table.items()}

    def detection(self, value: int, area: float) -> Detection | None:
        row = self.fields(value, area)
        if row is None:
            return None
        skip = {"class", "class_id"}
        measurements = {name: float(v) for name, v in row.items() if name not in skip}
        return Detection(str(row["class"]), _colour(int(row["class_id"])), measurements)
