"""tilewise's model, inference graph and command line.

The Python API is what the CLI calls::

    from pipeline import predict, train, load_checkpoint, build_model
    report = predict("scene.tif", "mask.tif", model="model.safetensors", tile=256, output_kind="both")
    trained = train(images=["scene.tif"], masks=["truth.tif"], out="model.safetensors", epochs=10)
"""

from .checkpoint import Checkpoint, ModelCard, load_checkpoint, read_card, save_checkpoint
from .model import UNet, UNetConfig, build_model
from .options import PredictOptions
from .predict import PredictReport, predict, predict_array
from .training import TrainOptions, TrainReport, train

__all__ = [
    "Checkpoint",
    "ModelCard",
    "PredictOptions",
    "PredictReport",
    "TrainOptions",
    "TrainReport",
    "UNet",
    "UNetConfig",
    "build_model",
    "load_checkpoint",
    "predict",
    "predict_array",
    "read_card",
    "save_checkpoint",
    "train",
]
