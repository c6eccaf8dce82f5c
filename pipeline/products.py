"""What a run makes from its written output besides the rasters: the ``--preview`` PNG and ``--vector`` polygons.

Both read the label map back from the committed output (not from memory), so they work at any raster size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tiling.errors import OptionError
from tiling.masking import CoarseMask
from tiling.readers import RasterReader
from tiling.writers import OutputFormat
from tiling.writers.atomic import check_destination
from tiling.writers.polygons import vector_driver, write_polygons
from tiling.writers.preview import write_preview

from .options import PredictOptions


@dataclass
class Products:
    paths: list[Path] = field(default_factory=list)
    polygons: int | None = None


def check_products(opts: PredictOptions, output: Path) -> None:
    """Refuse unusable product destinations before any work (like the raster outputs)."""
    for name in ("preview", "vector"):
        path = getattr(opts, name)
        if path is None:
            continue
        if Path(path).resolve() == output.resolve():
            raise OptionError(f"the {name} {path} would overwrite the output")
        check_destination(Path(path), opts.overwrite)
    if opts.vector:
        vector_driver(Path(opts.vector))


def write_products(
    opts: PredictOptions,
    reader: RasterReader,
    mask: CoarseMask | None,
    fmt: OutputFormat,
    class_names: tuple[str, ...],
) -> Products:
    products = Products()
    labels = fmt.label_raster()
    if opts.preview:
        size = opts.preview_size
        products.paths.append(write_preview(opts.preview, reader, labels, mask, class_names, size, opts.overwrite))
    if opts.vector:
        if labels is None:
            raise OptionError("vector polygons are made from the label map: use output_kind labels or both")
        products.polygons = write_polygons(
            labels, opts.vector, class_names, opts.min_area, opts.vector_classes, overwrite=opts.overwrite
        )
        products.paths.append(Path(opts.vector))
    return products
