"""OME-Zarr (NGFF 0.5) output: multiscale images with scale transforms, and an NGFF ``labels`` image.

Layout (Zarr v3; the metadata lives under ``attrs["ome"]``)::

    out.ome.zarr/            multiscale image: class probabilities (c, y, x), or the label map when only labels
      0/ 1/ 2/ …             are written (levels halve in y and x)
      labels/classes/0 1 …   the label map (y, x) as an NGFF label image of the root image (when both)
"""

from __future__ import annotations

from typing import Any

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
