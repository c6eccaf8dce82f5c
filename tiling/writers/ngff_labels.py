"""An NGFF label image written into an existing OME-Zarr image (``IMAGE.ome.zarr/labels/NAME``).

The label map gets the image's own levels (paths, sizes and coordinate transforms) and is listed in the image's
``labels`` group, so napari and other NGFF viewers show the segmentation over the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from ..errors import OptionError
from ..readers.base import RasterInfo
from .formats import OutputContent
from .layers import Layer
from .ome_zarr import NGFF_VERSION, label_metadata
from .pyramid import build_nearest_level
from .workstore import ARRAY_CONFIG, COMPRESSORS, WorkStore
from .zarr_store import ZarrStoreFormat


@dataclass(frozen=True)
class SourceImage:
    """The OME-Zarr image a label image is written into: its levels' paths, (y, x) shapes and transforms."""

    group: Path
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    axes: tuple[dict[str, Any], ...]
    transforms: tuple[list[dict[str, Any]], ...]

    @classmethod
    def at(cls, group: Path) -> SourceImage:
        """The image whose ``labels`` folder ``group/labels`` is (an error naming the problem if it is none)."""
        try:
            node = zarr.open_group(str(group), mode="r")
            attrs = dict(node.attrs)
            multiscales = attrs.get("ome", attrs)["multiscales"][0]
        except (KeyError, IndexError, OSError, ValueError, zarr.errors.GroupNotFoundError):
            raise OptionError(f"{group} is not an OME-Zarr image, so it cannot hold NGFF labels") from None
        axes = multiscales["axes"]
        names = [a["name"] for a in axes]
        if names[-2:] != ["y", "x"] or any(n not in ("c", "y", "x") for n in names):
            raise OptionError(f"labels can be added to 2-D images with axes (c,) y, x; {group} has {names}")
        keep = [i for i, n in enumerate(names) if n in ("y", "x")]
        paths, shapes, transforms = [], [], []
        for dataset in multiscales["datasets"]:
            paths.append(dataset["path"])
            shapes.append(tuple(node[dataset["path"]].shape[-2:]))
            transforms.append(
                [
                    {"type": t["type"], t["type"]: [t[t["type"]][i] for i in keep]}
                    for t in dataset.get("coordinateTransformations", [])
                ]
            )
        return cls(group, tuple(paths), tuple(shapes), tuple(axes[i] for i in keep), tuple(transforms))

    def label_metadata(self, layer: Layer, class_names: tuple[str, ...], name: str) -> dict[str, Any]:
        """NGFF 0.5 metadata of a label image with this image's levels and coordinate transforms."""
        datasets = [
            {"path": path, "coordinateTransformations": transforms}
            for path, transforms in zip(self.paths, self.transforms, strict=True)
        ]
        ome = label_metadata(layer, RasterInfo("", "", 1, 1, 1, "uint8"), 1, class_names)["ome"]
        ome["multiscales"] = [{"name": name, "axes": list(self.axes), "datasets": datasets}]
        return {"ome": ome}


def labels_target(path: Path) -> SourceImage | None:
    """The source image when ``path`` is ``IMAGE.ome.zarr/labels/NAME`` inside an existing OME-Zarr image."""
    if path.parent.name != "labels" or not (path.parent.parent / "zarr.json").exists():
        return None
    return SourceImage.at(path.parent.parent)


def ensure_labels_group(image: Path) -> zarr.Group:
    """The image's ``labels`` group, created (empty) if it has none."""
    labels = zarr.open_group(str(image / "labels"), mode="a", zarr_format=3)
    if "ome" not in labels.attrs:
        labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": []}
    return labels


def register_label(source: SourceImage, name: str) -> None:
    """List ``name`` in the image's ``labels`` group."""
    labels = ensure_labels_group(source.group)
    ome = dict(labels.attrs.get("ome", {}))
    names = [n for n in ome.get("labels", []) if n != name]
    labels.attrs["ome"] = {**ome, "version": NGFF_VERSION, "labels": [*names, name]}


class NgffLabelsFormat(ZarrStoreFormat):
    """The label map as an NGFF label image of the OME-Zarr image that holds the output path (see the module's
    docstring)."""

    name = "ngff-labels"
    levels_in_store = True
    in_place_capable = False

    def __init__(self, path: Path, spec: Any) -> None:
        super().__init__(path, spec)
        source = labels_target(path)
        assert source is not None, f"{path} is not inside an OME-Zarr image's labels folder"
        self.source = source

    @classmethod
    def claims(cls, path: Path) -> bool:
        return labels_target(path) is not None

    def array_paths(self, layers: tuple[Layer, ...]) -> dict[str, str]:
        return {layers[0].name: self.source.paths[0]}

    def layer_raster(self, name: str) -> Path | None:
        return self.path if name in self.spec.layers else None

    def check_destination(self, overwrite: bool) -> None:
        if self.spec.layers not in (("labels",), ("instances",)):
            raise OptionError("an NGFF label image holds one map: use --output-kind labels or --output-kind instances")
        ensure_labels_group(self.source.group)
        super().check_destination(overwrite)

    def check_content(self, content: OutputContent) -> None:
        rows, cols = self.source.shapes[0]
        if (rows, cols) != (content.info.height, content.info.width):
            raise OptionError(
                f"{self.path} would label {self.source.group}, whose full-resolution image is {rows} x {cols}, "
                f"but the run's raster is {content.info.height} x {content.info.width}: read that image at its "
                "full resolution"
            )

    def complete(self, store: WorkStore, content: OutputContent) -> None:
        root, layer = store.group, content.layers[0]
        previous = root[self.source.paths[0]]
        for path, shape in zip(self.source.paths[1:], self.source.shapes[1:], strict=True):
            target = root.create_array(
                path,
                shape=shape,
                chunks=tuple(min(c, s) for c, s in zip(previous.chunks, shape, strict=True)),
                dtype=previous.dtype,
                fill_value=layer.nodata,
                compressors=COMPRESSORS,
                config=ARRAY_CONFIG,
                dimension_names=("y", "x"),
                overwrite=True,
            )
            build_nearest_level(previous, target)
            previous = target
        root.attrs.update(self.source.label_metadata(layer, content.class_names, self.path.name))

    def expected_arrays(self, store: WorkStore, content: OutputContent) -> dict[str, tuple[int, ...]]:
        return dict(zip(self.source.paths, self.source.shapes, strict=True))

    def committed(self, content: OutputContent) -> None:
        register_label(self.source, self.path.name)
