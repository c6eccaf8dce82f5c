"""What a run makes from its written output besides the rasters: the ``--preview`` PNG and ``--vector`` polygons.

Both read the label map back from the committed output (not from memory), so they work at any raster size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tiling.errors import OptionError
from tiling.masking import CoarseMask
from tiling.readers import RasterReader
from tiling.writers import OutputSpec
from tiling.writers.atomic import check_destination

from .options import PredictOptions
from .preview import write_preview
from .vector import vector_driver, write_polygons


@dataclass
class Products:
    paths: list[Path] = field(default_factory=list)
    polygons: int | None = None


def labels_location(output: Path, fmt: str, spec: OutputSpec) -> Path | None:
    """Where the run's label map is once written (None when only probabilities are written)."""
    if not spec.writes_labels:
        return None
    if fmt == "zarr":
        return output / "labels"
    if fmt == "ome-zarr":
        return output / ("labels/classes/0" if spec.writes_probs else "0")
    return output  # COG, GeoTIFF, OME-TIFF: the labels are the file at the output path


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
    output: Path,
    fmt: str,
    spec: OutputSpec,
) -> Products:
    products = Products()
    labels = labels_location(output, fmt, spec)
    if opts.preview:
        size = opts.preview_size
        products.paths.append(write_preview(opts.preview, reader, labels, mask, spec.class_names, size, opts.overwrite))
    if opts.vector:
        if labels is None:
            raise OptionError("vector polygons are made from the label map: use output_kind labels or both")
        products.polygons = write_polygons(
            labels, opts.vector, spec.class_names, opts.min_area, opts.vector_classes, overwrite=opts.overwrite
        )
        products.paths.append(Path(opts.vector))
    return products
