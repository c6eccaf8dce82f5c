"""The command line's arguments: ``tilewise predict``, ``info`` and ``train``, grouped as a user looks for them.

Every flag shows its allowed values and its default. The defaults come from the options' own dataclasses, so a
flag's help cannot drift from what a run does; flags default to None here so that a ``--config`` file's values
are only overridden by flags actually given.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Any

from tiling.windows import BLEND_KINDS

from .options import BACKEND_NAMES, PRECISION_NAMES, TTA_MODES, VECTOR_STYLES, PredictOptions

TOOL = "Segment rasters larger than memory (satellite scenes, whole-slide images) with a U-Net, and train it."
PREDICT_EXAMPLES = """examples:
  tilewise predict scene.tif landcover.tif --model model.safetensors
  tilewise predict slide.svs slide.ome.zarr --model nuclei.safetensors --mask tissue --output-kind labels,instances \\
      --objects nuclei.csv --vector nuclei.geojson --vector-style qupath
  tilewise predict scene.tif out.tif --model model.safetensors --cluster local:4
  tilewise predict scene.tif out.tif --model model.safetensors --resume        # after an interruption
"""
TRAIN_EXAMPLES = """examples:
  tilewise train --images img/*.tif --masks masks/*.tif --out model.safetensors --epochs 20
  tilewise train --config configs/isbi2012.yaml --out isbi.safetensors
"""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"tilewise: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class _Help(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=118)


def _default(name: str) -> str:
    value = getattr(PredictOptions(), name)
    return "none" if value is None else str(value)


def _int_or_auto(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None


def _overlap(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        message = f"expected pixels (64) or a fraction of the tile (0.25), got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    return value if value < 1 else int(value) if value == int(value) else value


def numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.replace(" ", "").split(",") if b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 4,3,2, got {text!r}") from None


def _reading(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input and reading")
    g.add_argument("--config", help="YAML run config (its predict: section); flags override it")
    g.add_argument("--bands", type=numbers, help="1-based input bands, e.g. 4,3,2 (default: the checkpoint's)")
    g.add_argument("--level", type=int, help="slide pyramid level to read, 0 = full resolution (default: none)")
    g.add_argument("--mpp", type=float, help="read at this many µm per pixel (default: the model's, if it says)")
    g.add_argument(
        "--mpp-tolerance", type=float, help=f"a level this close to --mpp is read as is ({_default('mpp_tolerance')})"
    )
    g.add_argument("--input-mpp", type=float, help="the input's pixel size in µm, for one that states none (PNG)")
    g = p.add_argument_group("where to compute (masks)")
    g.add_argument("--mask", help="tissue, nodata, none or a mask raster: non-zero = compute (default: none)")
    g.add_argument("--mask-scale", type=int, help="mask cell in pixels (default: planned, ≤ 2048 cells a side)")
    g.add_argument("--tissue-channel", choices=("saturation", "grey"), help="tissue detection (default: saturation)")
    g.add_argument("--tissue-threshold", type=float, help="fixed tissue threshold in [0, 1] (default: Otsu's)")
    g.add_argument(
        "--min-valid", type=float, help=f"skip tiles with less valid area than this ({_default('min_valid')})"
    )


def _tiling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tiles and memory")
    g.add_argument(
        "--tile",
        type=int,
        help="tile size in pixels; for a valid-padding model the output tile (default: the checkpoint's)",
    )
    g.add_argument("--overlap", type=_overlap, help=f"pixels (64) or a fraction of the tile ({_default('overlap')})")
    g.add_argument("--chunk", type=_int_or_auto, help="output chunk in pixels, or auto (default: auto, planned)")
    g.add_argument("--workers", type=int, help="chunks in flight (default: planned from memory and cores)")
    g.add_argument("--memory-limit", help="4GB, 512MB, or 0.5 of free memory (default: 0.6 of free memory)")


def add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "predict",
        parents=[common],
        help="segment a raster into classes, probabilities and objects",
        description="Segment a raster: class labels, probabilities and objects, as COG, OME-TIFF, OME-Zarr or Zarr.",
        epilog=PREDICT_EXAMPLES,
        formatter_class=_Help,
    )
    p.add_argument("input", help="GeoTIFF/COG, any GDAL raster, TIFF or slide (SVS, NDPI, OME-TIFF), Zarr")
    p.add_argument("output", help=".tif (COG), .ome.tif, .ome.zarr, .zarr, or IMAGE.ome.zarr/labels/NAME")
    p.add_argument("--model", help="tilewise checkpoint (.safetensors); required (or model: in the config)")
    _reading(p)
    _tiling(p)
    g = p.add_argument_group("model and inference")
    g.add_argument("--blend", choices=BLEND_KINDS, help=f"blend window ({_default('blend')})")
    g.add_argument("--sigma", type=float, help=f"Gaussian σ as a fraction of the tile ({_default('sigma')})")
    g.add_argument("--batch-size", type=_int_or_auto, help="tiles per forward pass, or auto (default: auto, timed)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--precision", choices=PRECISION_NAMES, help=f"autocast precision ({_default('precision')})")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run convolutions in channels-last memory layout, faster on CPUs (default: on)",
    )
    g.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        help="engine: torch, onnxruntime (tilewise[onnx]), openvino (tilewise[openvino]), or auto: the fastest "
        f"installed, timed on the first tiles ({_default('backend')})",
    )
    g.add_argument("--tta", choices=TTA_MODES, help=f"test-time augmentation ({_default('tta')})")
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--output-kind", help="labels, probs, both, instances, or joined: labels,instances (default: labels)"
    )
    g.add_argument("--probs-dtype", choices=("float32", "uint8"), help=f"probabilities ({_default('probs_dtype')})")
    g.add_argument("--threshold", type=float, help=f"binary label threshold ({_default('threshold')})")
    g.add_argument("--format", choices=("cog", "geotiff", "ome-tiff", "ome-zarr", "zarr"), help="(default: by name)")
    g.add_argument("--objects", help="object table, .csv or .parquet: one row per object (needs instances)")
    g.add_argument("--min-object-area", type=int, help="drop objects smaller than this, px (default: the model's)")
    g.add_argument("--vector", help="polygons, .gpkg or .geojson: per object, or per class region (default: none)")
    g.add_argument("--vector-style", choices=VECTOR_STYLES, help="plain GIS features or QuPath detections (plain)")
    g.add_argument("--vector-classes", type=numbers, help="classes to polygonise, e.g. 1,2 (default: all but 0)")
    g.add_argument("--min-area", type=float, help="drop polygons smaller than this, map units² or µm² (default: 0)")
    g.add_argument("--preview", help="PNG preview: classes over the input, objects outlined (default: none)")
    g.add_argument("--preview-size", type=int, help=f"longest side of the preview ({_default('preview_size')})")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace existing outputs")
    g = p.add_argument_group("running")
    g.add_argument(
        "--resume", action="store_true", default=None, help="continue an interrupted run from its work store"
    )
    g.add_argument("--work-dir", help="folder or fsspec URL for the work store (default: next to the output)")
    g.add_argument("--scratch-dir", help="local folder where an s3:// output is assembled before upload (temp)")
    g.add_argument("--scheduler", help="threads or tcp://HOST:PORT of a running Dask scheduler (default: threads)")
    g.add_argument("--cluster", help="local:N, a local Dask cluster of N worker processes")
    g.add_argument("--report", help="write Dask's performance report (HTML) here, for cluster runs")
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )


def add_info(sub: Any, common: argparse.ArgumentParser) -> None:
    i = sub.add_parser(
        "info",
        parents=[common],
        help="describe a raster and how a run over it would be planned",
        description="Describe a raster and the plan of a run over it: tiles, chunks, memory and, with OUTPUT, disk.",
        formatter_class=_Help,
    )
    i.add_argument("input")
    i.add_argument("output", nargs="?", help="an output to plan for: its files and the disk space they need")
    i.add_argument("--model", help="checkpoint whose tile size, bands and classes to plan with")
    _reading(i)
    _tiling(i)
    g = i.add_argument_group("outputs")
    g.add_argument("--output-kind", help="labels, probs, both, instances, or joined (default: labels)")
    g.add_argument("--probs-dtype", choices=("float32", "uint8"), help=f"probabilities ({_default('probs_dtype')})")
    g.add_argument("--format", choices=("cog", "geotiff", "ome-tiff", "ome-zarr", "zarr"), help="(default: by name)")
    g.add_argument("--work-dir", help="folder for the work store (default: next to the output)")


def build_parser(add_train: Any) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and the libraries' own log lines")
    parser = Parser(prog="tilewise", description=TOOL, parents=[common], formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"tilewise {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, title="commands", metavar="COMMAND")
    add_predict(sub, common)
    add_info(sub, common)
    add_train(sub, common)
    return parser


def _version() -> str:
    try:
        return metadata.version("tilewise")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


#: Training settings that only a config's ``train:`` section sets (a test keeps this list whole).
CONFIG_ONLY_TRAIN_KEYS = (
    "palette",
    "upsampling",
    "batch_norm",
    "val_overlap",
    "flips",
    "rotations",
    "brightness",
    "contrast",
    "colour",
    "elastic_sigma",
    "elastic_grid",
    "weight_decay",
    "about",
)


def _class_weights(text: str) -> str | tuple[float, ...]:
    if text == "balanced":
        return text
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or weights like 1,2.5, got {text!r}") from None


def _ignore_value(text: str) -> int | str:
    """A raw mask value (255) or a colour (#9B9B9B) for palette masks."""
    try:
        return int(text)
    except ValueError:
        return text


def add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    config_only = ", ".join(CONFIG_ONLY_TRAIN_KEYS)
    t = sub.add_parser(
        "train",
        parents=[common],
        help="train a U-Net on image/mask rasters",
        description="Train a U-Net on image/mask rasters; the best epoch is saved as a checkpoint for predict.",
        epilog=f"{TRAIN_EXAMPLES}\nsettings only a config's train: section sets: {config_only}\n",
        formatter_class=_Help,
    )
    t.add_argument("--config", help="YAML config (its train: section); flags override it")
    g = t.add_argument_group("data")
    g.add_argument("--images", nargs="+", help="training image rasters (globs and {0..24} ranges allowed)")
    g.add_argument("--masks", nargs="+", help="their masks, in the same order")
    g.add_argument("--val-images", nargs="+", help="validation images (default: validate on the training set)")
    g.add_argument("--val-masks", nargs="+", help="validation masks")
    g.add_argument("--bands", type=numbers, help="1-based image bands, e.g. 4,3,2 (default: all)")
    g.add_argument("--class-names", nargs="+", help="class names, background first (default: background foreground)")
    g.add_argument(
        "--mask-encoding",
        choices=("ids", "binary", "palette", "instances"),
        help="class ids, 0/255, colours (palette in the config) or object ids (default: ids)",
    )
    g.add_argument("--ignore-value", type=_ignore_value, help="mask value (or #RRGGBB) of unlabelled pixels")
    g.add_argument("--instance-classes", help="instance masks: CSV of object id → class name (default: all one class)")
    g.add_argument("--mpp", type=float, help="the images' pixel size in µm, recorded for predict (default: none)")
    g.add_argument("--tile", type=int, help="training (output) tile size in pixels (default: 256)")
    g.add_argument("--oversample", type=float, help="share of tiles centred on a randomly drawn class (default: 0)")
    g.add_argument("--elastic", action=argparse.BooleanOptionalAction, default=None, help="elastic deformation (off)")
    g = t.add_argument_group("objects")
    g.add_argument("--boundary-width", type=int, help="instance masks: the boundary class's width, px (default: 2)")
    g.add_argument("--min-object-area", type=int, help="objects predict keeps: at least this many px (default: 0)")
    g.add_argument(
        "--weight-map",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the U-Net paper's weights on the gaps between objects (default: on for instance masks)",
    )
    g.add_argument("--w0", type=float, help="the weight map's w0 (default: 10)")
    g.add_argument("--weight-sigma", type=float, help="the weight map's σ in pixels (default: 5)")
    g = t.add_argument_group("model")
    g.add_argument("--base-width", type=int, help="U-Net channels at the first level (default: 16)")
    g.add_argument("--depth", type=int, help="U-Net poolings (default: 4)")
    g.add_argument(
        "--padding",
        choices=("same", "valid"),
        help="same: padded convs; valid: the paper's unpadded convs, --tile is then the output tile (default: same)",
    )
    g = t.add_argument_group("loop")
    g.add_argument("--epochs", type=int, help="epochs (default: 20)")
    g.add_argument("--steps-per-epoch", type=int, help="optimiser steps per epoch (default: 50)")
    g.add_argument("--batch-size", type=int, help="tiles per step (default: 4)")
    g.add_argument("--loss", help="bce, dice, bce+dice (binary); ce, ce+dice (several classes) (default: the +dice)")
    g.add_argument("--class-weights", type=_class_weights, help="cross-entropy class weights: balanced or 1,2.5")
    g.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3)")
    g.add_argument("--schedule", choices=("cosine", "onecycle"), help="learning-rate schedule (default: cosine)")
    g.add_argument("--seed", type=int, help="random seed (default: 0)")
    g = t.add_argument_group("running")
    g.add_argument("--out", help="checkpoint to write; metrics CSV, curves PNG and resume file go beside it")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument(
        "--amp",
        choices=("auto", "on", "off"),
        help="autocast: fp16 on CUDA, bf16 on a CPU; auto: on CUDA and on CPUs with native bf16 (default: auto)",
    )
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--loader-workers", type=int, help="processes building training batches (default: 0, none)")
    g.add_argument("--resume", action="store_true", default=None, help="continue from the resume file beside --out")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing checkpoint")
    g.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None, help="learning-curve PNG (on)")
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
