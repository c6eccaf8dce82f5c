"""What a training tile is taught: class ids from its mask, and with objects, a boundary class and the U-Net
paper's separation weights.

- Class masks (``ids``, ``binary``, ``palette``) give their class ids as they are; with ``weight_map`` the
  objects whose separation is weighted are the 4-connected regions of the classes ≥ 1 (ISBI: the cells between
  membranes).
- Instance masks (``instances``: one id per object) are taught as classes: each object's class (1, or from
  ``--instance-classes``) inside it, and a boundary class on its pixels within ``boundary_width`` of another
  object or the background, so the model learns to keep touching objects apart; prediction gives the boundary
  back to the nearest object (``tiling.instances``).

Both depend on pixels around a tile, so the mask is read with ``margin`` pixels around the tile and the targets
cut out of the middle: a tile's targets are those of the whole raster.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from tiling.errors import InputError

from .masks import IGNORE
from .objects import boundary_classes, margin, separation_weights

if TYPE_CHECKING:
    from .options import TrainOptions

CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class TargetRule:
    """How decoded masks become training targets (see the module's docstring)."""

    instances: bool = False
    #: Instance masks: the class of each object id (index = id; default class 1 for every id).
    object_class: dict[int, int] | None = None
    boundary_class: int = 2
    boundary_width: int = 2
    #: The separation term's weight (0: no weight map) and σ in pixels.
    w0: float = 0.0
    sigma: float = 5.0

    @property
    def margin(self) -> int:
        """Pixels of mask read around a tile (0 when targets need nothing around the tile)."""
        if not self.instances and not self.w0:
            return 0
        return margin(self.sigma if self.w0 else 0.0, self.boundary_width if self.instances else 0)

    def classes(self, decoded: np.ndarray) -> np.ndarray:
        """The class ids of a decoded mask window (without the weights)."""
        if not self.instances:
            return decoded
        ids = np.where(decoded == IGNORE, 0, decoded)
        labels = boundary_classes(ids, self._class_table(ids), self.boundary_class, self.boundary_width)
        labels[decoded == IGNORE] = IGNORE
        return labels

    def targets(self, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class ids (int64, ``IGNORE`` kept) and separation weights (float32, or None without a weight map) of a
        decoded mask window: object ids for instance masks, class ids otherwise."""
        ignored = decoded == IGNORE
        if self.instances:
            ids = np.where(ignored, 0, decoded)
            labels = boundary_classes(ids, self._class_table(ids), self.boundary_class, self.boundary_width)
            objects = ids
        else:
            labels = decoded.copy()
            objects = ndimage.label((decoded >= 1) & ~ignored, structure=CROSS)[0] if self.w0 else None
        labels[ignored] = IGNORE
        weights = None
        if self.w0 and objects is not None:
            weights = separation_weights(objects, self.w0, self.sigma)
            weights[ignored] = 0.0
        return labels, weights

    def _class_table(self, ids: np.ndarray) -> np.ndarray:
        table = np.ones(int(ids.max()) + 1, np.int64)
        table[0] = 0
        for object_id, value in (self.object_class or {}).items():
            if object_id < table.size:
                table[object_id] = value
        return table


def read_instance_classes(path: str, class_names: tuple[str, ...]) -> dict[int, int]:
    """Object id → class id from a CSV with the columns ``id`` and ``class`` (an object class's name or id)."""
    objects = class_names[1:-1]  # neither the background nor the boundary
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"cannot read the instance classes {path}: {exc.strerror or exc}") from None
    if rows and not {"id", "class"} <= set(rows[0]):
        raise InputError(f"instance classes {path} needs the columns id and class, has {sorted(rows[0])}")
    table: dict[int, int] = {}
    for line, row in enumerate(rows, start=2):
        name = row["class"].strip()
        try:
            object_id = int(row["id"])
            value = objects.index(name) + 1 if name in objects else int(name)
        except ValueError:
            raise InputError(
                f"instance classes {path}, line {line}: class {name!r} is none of {list(objects)}"
            ) from None
        if not 1 <= value <= len(objects):
            raise InputError(f"instance classes {path}, line {line}: class {value} is not an object class")
        table[object_id] = value
    return table


def target_rule(opts: TrainOptions) -> TargetRule:
    """The targets ``opts`` ask for (see ``TrainOptions``: mask encoding, boundary width, weight map)."""
    instances = opts.mask_encoding == "instances"
    object_class = None
    if opts.instance_classes is not None:
        object_class = read_instance_classes(opts.instance_classes, opts.class_names)
    return TargetRule(
        instances=instances,
        object_class=object_class,
        boundary_class=len(opts.class_names) - 1 if instances else 0,
        boundary_width=opts.boundary_width,
        w0=opts.w0 if opts.weighted else 0.0,
        sigma=opts.weight_sigma,
    )
