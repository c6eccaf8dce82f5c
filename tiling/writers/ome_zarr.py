"""OME-Zarr (NGFF 0.5) output: multiscale images with scale transforms, and an NGFF ``labels`` image.

Layout (Zarr v3; the metadata lives under ``attrs["ome"]``)::

    out.ome.zarr/            multiscale image: class probabilities (c, y, x), or the label map when only labels
      0/ 1/ 2/ …             are written (levels halve in y and x)
      labels/classes/0 1 …   the label map (y, x) as an NGFF label image of the root image (when both)

An output path ``IMAGE.ome.zarr/labels/NAME`` inside an existing OME-Zarr image writes the label map as an NGFF
label image *of that image*: the same levels (paths, sizes and coordinate transforms), listed in its
``labels`` group, so viewers show it over the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from ..errors import OptionError
from ..readers.base import RasterInfo
from .geotiff import PALETTE
from .layers import Layer

NGFF_VERSION = "0.5"


def array_paths(layers: list[Layer]) -> dict[str, str]:
    """Where each layer's level 0 lives in the store (its level k is the sibling named k)."""
    names = {layer.name for layer in layers}
    if names == {"labels"}:
        return {"labels": "0"}
    paths = {"probs": "0"}
    if "labels" in names:
        paths["labels"] = "labels/classes/0"
    return paths


def _pixel_scale(info: RasterInfo) -> tuple[tuple[float, float], str | None]:
    """Pixel size (y, x) and its unit: µm for slides, the CRS unit for georeferenced rasters, else pixels."""
    if info.pixel_size_um:
        return info.pixel_size_um, "micrometer"
    if info.transform:
        a, _, _, _, e, _ = info.transform
        return (abs(e), abs(a)), None
    return (1.0, 1.0), None


def multiscales(layer: Layer, info: RasterInfo, levels: int, name: str) -> list[dict[str, Any]]:
    (size_y, size_x), unit = _pixel_scale(info)
    space: dict[str, Any] = {"type": "space"}
    if unit:
        space["unit"] = unit
    axes = [{"name": "y", **space}, {"name": "x", **space}]
    lead: list[float] = []
    if layer.name != "labels":
        axes.insert(0, {"name": "c", "type": "channel"})
        lead = [1.0]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [{"type": "scale", "scale": [*lead, size_y * 2**level, size_x * 2**level]}],
        }
        for level in range(levels)
    ]
    return [{"name": name, "axes": axes, "datasets": datasets}]


def image_metadata(layer: Layer, info: RasterInfo, levels: int) -> dict[str, Any]:
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": multiscales(layer, info, levels, layer.name)}
    if layer.name != "labels":
        top = 1.0 if layer.dtype == "float32" else 254.0
        ome["omero"] = {
            "channels": [
                {
                    "label": name,
                    "color": "FFFFFF",
                    "active": True,
                    "window": {"min": 0, "max": top, "start": 0, "end": top},
                }
                for name in layer.band_names
            ]
        }
    return {"ome": ome}


def label_metadata(layer: Layer, info: RasterInfo, levels: int, class_names: tuple[str, ...]) -> dict[str, Any]:
    colors = [{"label-value": i, "rgba": [*PALETTE[i % len(PALETTE)], 255]} for i in range(len(class_names))]
    properties = [{"label-value": i, "class": name} for i, name in enumerate(class_names)]
    properties.append({"label-value": int(layer.nodata), "class": "nodata"})
    return {
        "ome": {
            "version": NGFF_VERSION,
            "multiscales": multiscales(layer, info, levels, "classes"),
            "image-label": {"colors": colors, "properties": properties, "source": {"image": "../../"}},
        }
    }


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
