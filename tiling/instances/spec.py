"""What makes an object out of a class map: which classes form objects, and which join the nearest one.

Two rules cover the models tilewise trains and reads:

- *components*: every 4-connected region of one object class is an object (buildings from a semantic model);
- *seeds and growth*: 4-connected regions of an object (interior) class are the objects' seeds, and pixels of a
  growth (boundary) class join the seed they are nearest to, within ``radius`` pixels (a model trained with a
  boundary class between touching nuclei: the boundary keeps the seeds apart, then is given back to them).

4-connectivity keeps seeds apart that touch only at a corner. The rule is local: whether two pixels join, and
which seed a boundary pixel joins, depends only on pixels within ``radius`` — which is what lets every chunk
compute its part from its own pixels plus a ``radius``-pixel halo, for the same result at any chunking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import OptionError


@dataclass(frozen=True)
class InstanceSpec:
    """Object classes (each 4-connected region of one is an object, or an object's seed) and growth classes
    (pixels that join the nearest seed within ``radius``)."""

    object_classes: tuple[int, ...]
    growth_classes: tuple[int, ...] = ()
    radius: int = 0
    #: Objects smaller than this (pixels of the grid the model reads) are fragments: background.
    min_area: int = 0

    def __post_init__(self) -> None:
        if not self.object_classes:
            raise OptionError("an instance rule needs at least one object class")
        if set(self.object_classes) & set(self.growth_classes):
            raise OptionError("a class cannot both form objects and join them")
        if self.radius < 0 or (self.growth_classes and self.radius == 0):
            raise OptionError(f"growth needs a positive radius, got {self.radius}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int) or self.min_area < 0:
            raise OptionError(f"the smallest object must be a whole number of pixels ≥ 0, got {self.min_area!r}")
        if any(c < 1 or c > 254 for c in (*self.object_classes, *self.growth_classes)):
            raise OptionError("object and growth classes must be class ids 1..254 (0 is the background)")

    @property
    def halo(self) -> int:
        """Pixels of the neighbouring chunks a chunk needs to decide its own (the growth radius)."""
        return self.radius

    @classmethod
    def components(cls, classes: int) -> InstanceSpec:
        """Every class but the background forms objects (a binary model has one class, 1)."""
        return cls(tuple(range(1, max(classes, 2))))

    def to_mapping(self) -> dict[str, Any]:
        return {
            "object_classes": list(self.object_classes),
            "growth_classes": list(self.growth_classes),
            "radius": self.radius,
            "min_area": self.min_area,
        }

    @classmethod
    def from_mapping(cls, spec: dict[str, Any]) -> InstanceSpec:
        try:
            return cls(
                tuple(int(c) for c in spec["object_classes"]),
                tuple(int(c) for c in spec.get("growth_classes", ())),
                int(spec.get("radius", 0)),
                int(spec.get("min_area", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OptionError(f"not an instance rule: {spec!r} ({exc})") from None
