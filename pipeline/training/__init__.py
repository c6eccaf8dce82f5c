"""Training: image/mask rasters in, a checkpoint that ``predict`` reads out (``train``, ``TrainOptions``)."""

from .loop import TrainReport, train
from .options import TrainOptions, options_from_config

__all__ = ["TrainOptions", "TrainReport", "options_from_config", "train"]
