"""Objects (instances) from a class map, the same for any chunking: pieces per chunk, joined across chunk
faces, boundary pixels given to the nearest seed, measured, and numbered in raster order of their first pixel."""

from .measure import Measures, combine, measure
from .pieces import Pieces, label_pieces
from .spec import InstanceSpec
from .union import face_pairs, object_keys

__all__ = ["InstanceSpec", "Measures", "Pieces", "combine", "face_pairs", "label_pieces", "measure", "object_keys"]
