"""What a run makes from its written output besides the rasters: the ``--preview`` PNG and ``--vector`` polygons.

Both read the label map back from the committed output (not from memory), so they work at any raster size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tiling.errors import OptionError
from tiling.instances.passes import Objects
from tiling.instances.table import check_table_path, object_columns, write_object_table
from tiling.writers.atomic import check_destination
from tiling.writers.polygons import vector_driver, write_polygons
from tiling.writers.preview import write_preview

from .options import PredictOptions

if TYPE_CHECKING:
    from .run_plan import RunPlan


@dataclass
class Products:
    paths: list[Path] = field(default_factory=list)
    polygons: int | None = None


def check_products(opts: PredictOptions, output: Path) -> None:
    """Refuse unusable product destinations before any work (like the raster outputs)."""
    for name in ("preview", "vector", "objects"):
        path = getattr(opts, name)
        if path is None:
            continue
        if Path(path).resolve() == output.resolve():
            raise OptionError(f"the {name} {path} would overwrite the output")
        check_destination(Path(path), opts.overwrite)
    if opts.vector:
        vector_driver(Path(opts.vector))
    if opts.objects:
        check_table_path(Path(opts.objects), opts.overwrite)


def write_products(opts: PredictOptions, plan: RunPlan, objects: Objects | None) -> Products:
    """The preview, the polygons and the object table of a run whose outputs are written."""
    assert plan.output is not None
    fmt, class_names = plan.output.format, plan.card.class_names
    products = Products()
    labels = fmt.layer_raster("labels")
    if opts.preview:
        size = opts.preview_size
        preview = write_preview(opts.preview, plan.reader, labels, plan.mask, class_names, size, opts.overwrite)
        products.paths.append(preview)
    if opts.vector:
        if labels is None:
            raise OptionError("vector polygons are made from the label map: use output_kind labels or both")
        products.polygons = write_polygons(
            labels, opts.vector, class_names, opts.min_area, opts.vector_classes, overwrite=opts.overwrite
        )
        products.paths.append(Path(opts.vector))
    if opts.objects and objects is not None:
        columns = object_columns(objects, class_names, plan.reader.info)
        products.paths.append(write_object_table(Path(opts.objects), columns, opts.overwrite))
    return products
