"""OME-Zarr (NGFF 0.5) output: multiscale images with scale transforms, and an NGFF ``labels`` image.

Layout (Zarr v3; the metadata lives under ``attrs["ome"]``)::

    out.ome.zarr/            multiscale image: class probabilities (c, y, x), or the label map when only labels
      0/ 1/ 2/ …             are written (levels halve in y and x)
      labels/classes/0 1 …   the label map (y, x) as an NGFF label image of the root image (when both)

A label image written into an existing OME-Zarr image is ``ngff_labels.NgffLabelsFormat``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..readers.base import RasterInfo
from .formats import OutputContent
from .geotiff import PALETTE
from .layers import Layer
from .pyramid import add_level, level_shapes
from .workstore import WorkStore
from .zarr_store import ZarrStoreFormat

NGFF_VERSION = "0.5"


#: The NGFF label image each map is written as, when it is not the image itself.
LABEL_IMAGES = {"labels": "classes", "instances": "instances"}


def array_paths(layers: tuple[Layer, ...]) -> dict[str, str]:
    """Where each layer's level 0 lives in the store (its level k is the sibling named k): the probabilities are
    the image when written, else the first map; the other maps are its NGFF label images."""
    names = [layer.name for layer in layers]
    image = "probs" if "probs" in names else names[0]
    return {name: "0" if name == image else f"labels/{LABEL_IMAGES[name]}/0" for name in names}


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
    if not layer.is_map:
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
    if not layer.is_map:
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
    """NGFF metadata of a label image: the class map with its colours and class names, or the instance map
    (one value per object; no colours, so viewers pick their own)."""
    image_label: dict[str, Any] = {"source": {"image": "../../"}}
    if layer.is_labels:
        image_label["colors"] = [
            {"label-value": i, "rgba": [*PALETTE[i % len(PALETTE)], 255]} for i in range(len(class_names))
        ]
        properties = [{"label-value": i, "class": name} for i, name in enumerate(class_names)]
    else:
        properties = [{"label-value": 0, "class": "background"}]
    image_label["properties"] = [*properties, {"label-value": int(layer.nodata), "class": "nodata"}]
    name = LABEL_IMAGES[layer.name]
    return {
        "ome": {
            "version": NGFF_VERSION,
            "multiscales": multiscales(layer, info, levels, name),
            "image-label": image_label,
        }
    }


class OmeZarrFormat(ZarrStoreFormat):
    """An OME-Zarr image (``.ome.zarr``): probabilities as the multiscale image and the label map as its NGFF
    label image, or the label map alone as the image."""

    name = "ome-zarr"
    suffixes = (".ome.zarr",)
    levels_in_store = True

    def array_paths(self, layers: tuple[Layer, ...]) -> dict[str, str]:
        return array_paths(layers)

    def layer_raster(self, name: str) -> Path | str | None:
        if name not in self.spec.layers:
            return None
        image = "probs" if self.spec.writes_probs else self.spec.layers[0]
        return self.located(self.path / ("0" if name == image else f"labels/{LABEL_IMAGES[name]}/0"))

    def complete(self, store: WorkStore, content: OutputContent) -> None:
        root = store.group
        for layer in content.layers:
            parent_path = store.paths[layer.name].rpartition("/")[0]
            parent = root[parent_path] if parent_path else root
            shapes = level_shapes(content.info.height, content.info.width)
            previous = parent["0"]
            for k, shape in enumerate(shapes[1:], start=1):
                previous = add_level(parent, str(k), previous, shape, layer)
            if parent_path:  # a label image under labels/
                parent.attrs.update(label_metadata(layer, content.info, len(shapes), content.class_names))
                images = [path.split("/")[1] for path in self.array_paths(content.layers).values() if "/" in path]
                root["labels"].attrs.update({"ome": {"version": NGFF_VERSION, "labels": images}})
            else:
                root.attrs.update(image_metadata(layer, content.info, len(shapes)))

    def expected_arrays(self, store: WorkStore, content: OutputContent) -> dict[str, tuple[int, ...]]:
        arrays = {}
        for layer in content.layers:
            parent = store.paths[layer.name].rpartition("/")[0]
            for k, (rows, cols) in enumerate(level_shapes(content.info.height, content.info.width)):
                arrays[f"{parent}/{k}" if parent else str(k)] = layer.shape(rows, cols)
        return arrays
