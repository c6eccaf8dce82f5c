"""Polygons as QuPath reads them: a GeoJSON FeatureCollection of detections in full-resolution pixel coordinates.

Each feature carries ``objectType: "detection"``, a ``classification`` (name and RGB colour, as QuPath shows
classes) and ``measurements`` (a name → number mapping). QuPath places the geometry on the slide's level 0,
which is why a run's polygons are mapped there (``PolygonFrame``) whatever level or pixel size it read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import shapely

from .atomic import check_destination, commit, remove_path
from .polygons import WINDOW, PolygonFrame, polygonise, vector_partial
from .write_errors import os_write_errors


@dataclass(frozen=True)
class Detection:
    """What QuPath shows of one polygon: its class (name, colour) and its measurements."""

    name: str
    colour: tuple[int, int, int]
    measurements: dict[str, float]


def write_qupath(
    raster: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    frame: PolygonFrame,
    describe: Callable[[int, float], Detection | None],
    values: Iterable[int] | None = None,
    window: int = WINDOW,
    overwrite: bool = False,
) -> int:
    """Write the polygons of ``raster`` to ``dest`` as QuPath detections; returns the number written.
    ``describe(value, area)`` gives each polygon's detection, or None to drop it."""
    dest = Path(dest)
    check_destination(dest, overwrite)
    partial = vector_partial(dest)
    written = 0
    try:
        with os_write_errors(dest), partial.open("w") as f:
            f.write('{"type": "FeatureCollection", "features": [\n')
            for piece in polygonise(raster, values, window):
                polygon = frame.place(piece.polygon)
                detection = describe(piece.value, frame.area(polygon))
                if detection is None:
                    continue
                feature = {
                    "type": "Feature",
                    "geometry": json.loads(shapely.to_geojson(polygon)),
                    "properties": {
                        "objectType": "detection",
                        "classification": {"name": detection.name, "color": list(detection.colour)},
                        "measurements": detection.measurements,
                    },
                }
                f.write((",\n" if written else "") + json.dumps(feature))
                written += 1
            f.write("\n]}\n")
        with os_write_errors(dest):
            commit(partial, dest)
    except BaseException:
        remove_path(partial)
        raise
    return written
