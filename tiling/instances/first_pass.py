"""The instance work a chunk does as it is written: its confidence, its seeds labelled as pieces, and the edges
its neighbours will need (the pieces' labels and the label map along each side, ``max(radius, 1)`` pixels
deep), so that no later pass has to read a neighbour's whole chunk."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..plan import Span
from .pieces import label_pieces

if TYPE_CHECKING:
    from ..writers.workstore import WorkStore

SIDES = ("top", "bottom", "left", "right")


def edges(array: np.ndarray, depth: int) -> dict[str, np.ndarray]:
    """The ``depth``-pixel strips of ``array`` along each side (fewer where the array is thinner)."""
    return {
        "top": array[:depth],
        "bottom": array[-depth:],
        "left": array[:, :depth],
        "right": array[:, -depth:],
    }


def first_pass(
    store: WorkStore, index: tuple[int, int], rows: Span, cols: Span, labels: np.ndarray, confidence: np.ndarray
) -> None:
    """Store the chunk's ``confidence``, its seeds, the pieces' table and its edges in ``store``."""
    spec = store.instances
    assert spec is not None
    width = store.array("labels").shape[-1]
    store.put("confidence", rows, cols, confidence)
    seeds, pieces = label_pieces(labels, spec, (rows.start, cols.start), width)
    store.put("seeds", rows, cols, seeds)
    depth = max(spec.halo, 1)
    table = {"classes": pieces.classes, "first": pieces.first}
    table.update({f"seeds_{side}": strip for side, strip in edges(seeds, depth).items()})
    table.update({f"labels_{side}": strip for side, strip in edges(labels, depth).items()})
    store.put_table("pieces", index, table)
