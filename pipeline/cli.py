"""The ``tilewise`` command: a thin layer over the ``pipeline`` API.

Problems the user can fix print one line on stderr (``tilewise: error: …``) and exit non-zero: 2 for a bad
option or config, 1 for bad input, output or checkpoint. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tiling.errors import OptionError, TilewiseError

from .config import load_config
from .options import PredictOptions

if TYPE_CHECKING:
    from .prediction import PredictReport

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"tilewise: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


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


def _bands(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.replace(" ", "").split(",") if b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected band numbers like 4,3,2, got {text!r}") from None


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (its predict: section); flags override it")
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the checkpoint's)")
    p.add_argument("--overlap", type=_overlap, help="tile overlap: pixels (64) or fraction of the tile (0.25)")
    p.add_argument("--chunk", type=_int_or_auto, help="output chunk size in pixels (default: planned)")
    p.add_argument("--workers", type=int, help="chunks in flight (default: planned from memory and cores)")
    p.add_argument("--memory-limit", help="memory budget: 4GB, 512MB, or 0.5 of free RAM (default 0.6)")
    p.add_argument("--bands", type=_bands, help="1-based input bands, e.g. 4,3,2 (default: the checkpoint's)")
    p.add_argument("--level", type=int, help="slide pyramid level to read (0 = full resolution)")
    p.add_argument("--mpp", type=float, help="read a slide at this many µm per pixel (closest finer level, resampled)")
    p.add_argument("--mpp-tolerance", type=float, help="a level within this fraction of --mpp is read as is (0.05)")
    p.add_argument("--mask", help="valid-area mask: tissue, nodata, none, or a mask raster (non-zero = compute)")
    p.add_argument("--mask-scale", type=int, help="mask grid cell in pixels (default: planned, ≤ 2048 cells a side)")
    p.add_argument("--tissue-channel", help="tissue detection on saturation (default) or grey")
    p.add_argument("--tissue-threshold", type=float, help="fixed tissue threshold in [0, 1] (default: Otsu)")
    p.add_argument("--min-valid", type=float, help="skip tiles with less than this valid fraction (default 0: any)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = _Parser(prog="tilewise", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("predict", parents=[common], help="segment a raster", description="Segment a raster.")
    p.add_argument("input", help="input raster: GeoTIFF/COG, any GDAL raster, TIFF or Zarr")
    p.add_argument("output", help="output: .tif (COG), .ome.tif, .ome.zarr or .zarr")
    p.add_argument("--model", help="tilewise checkpoint (.safetensors)")
    _add_plan_options(p)
    p.add_argument("--blend", help="blend window: gaussian (default), cosine or constant")
    p.add_argument("--sigma", type=float, help="gaussian sigma as a fraction of the tile (default 0.125)")
    p.add_argument("--batch-size", type=_int_or_auto, help="tiles per forward pass, or auto (default)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", help="fp32 (default), bf16 or fp16 (autocast)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tta", help="test-time augmentation: none (default) or flips")
    p.add_argument("--output-kind", help="labels (default), probs or both")
    p.add_argument("--probs-dtype", help="probabilities as float32 (default) or uint8")
    p.add_argument("--threshold", type=float, help="binary label threshold (default 0.5)")
    p.add_argument("--format", help="cog, geotiff, ome-tiff, ome-zarr or zarr (default: from the output's name)")
    p.add_argument("--preview", help="write a PNG preview of the input with the classes over it")
    p.add_argument("--preview-size", type=int, help="longest side of the preview in pixels (default 1024)")
    p.add_argument("--vector", help="write the label map as polygons: .gpkg or .geojson, in the input's CRS")
    p.add_argument("--min-area", type=float, help="drop polygons smaller than this (map units², default 0)")
    p.add_argument("--vector-classes", type=_bands, help="classes to polygonise, e.g. 1,2 (default: all but 0)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output")
    p.add_argument("--work-dir", help="folder or fsspec URL for the work store (default: next to the output)")
    p.add_argument("--scheduler", help="threads (default) or tcp://HOST:PORT of a running Dask scheduler")
    p.add_argument("--cluster", help="local:N: a local Dask cluster of N worker processes")
    p.add_argument("--report", help="write Dask's performance report (HTML) here (cluster runs)")
    p.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue an interrupted run: keep its finished chunks, run the others",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )

    i = sub.add_parser(
        "info",
        parents=[common],
        help="describe a raster and its tile plan",
        description="Describe a raster and the tile plan a run would use.",
    )
    i.add_argument("input")
    i.add_argument("--model", help="checkpoint whose tile size, bands and classes to plan with")
    _add_plan_options(i)
    _add_train_parser(sub, common)
    return parser


_CLI_ONLY = {"command", "debug", "input", "output", "model", "config"}


def _predict_options(args: argparse.Namespace) -> tuple[PredictOptions, str | None]:
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config(args.config, "predict", [*PredictOptions.names(), "model"]))
    flags = {k: v for k, v in vars(args).items() if k not in _CLI_ONLY and v is not None}
    for chosen, other in (("level", "mpp"), ("mpp", "level")):
        if chosen in flags and other not in flags:
            values.pop(other, None)  # --level overrides a config's mpp, and --mpp a config's level
    values.update(flags)
    model = args.model or values.pop("model", None)
    values.pop("model", None)
    if "progress" not in values:
        values["progress"] = sys.stderr.isatty()
    return PredictOptions().updated(**values), model


def _cmd_predict(args: argparse.Namespace) -> int:
    from .prediction import check_options, predict

    opts, model = _predict_options(args)
    if not model:
        raise OptionError("no model given: pass --model CHECKPOINT (or set model: in the config)")
    check_options(opts)
    report = predict(args.input, args.output, model, opts)
    print(summary(report), file=sys.stderr)
    return 0


def summary(report: PredictReport) -> str:
    """The final line of a run: what was written, what ran and what was skipped."""
    outputs = ", ".join(str(p) for p in report.outputs)
    why = f"outside the {report.mask} mask or nodata" if report.mask else "nodata"
    parts = [
        f"wrote {outputs} ({report.format}): {report.tiles_run} of {report.tiles_total} tiles run "
        f"({report.tiles_skipped} skipped, {report.skipped_fraction:.1%}, {why})"
    ]
    if report.valid_fraction is not None:
        parts.append(f"{report.valid_fraction:.1%} of the raster inside the mask")
    if report.chunks_unread:
        parts.append(f"{report.chunks_unread} of {report.chunks} chunk(s) not read")
    if report.polygons is not None:
        parts.append(f"{report.polygons} polygon(s)")
    if report.pixel_size_um:
        parts.append(f"{report.pixel_size_um[1]:.4g} µm/px")
    parts.append(
        f"{report.chunks} chunk(s) of {report.chunk} px, {report.workers} in flight, batch "
        f"{report.batch_size or 'n/a'} on {report.device}, {report.seconds:.1f} s"
    )
    if report.resumed:
        parts.append(f"resumed: {report.chunks_computed} of {report.chunks} chunks computed")
    return ", ".join(parts)


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import describe

    opts, model = _predict_options(args)
    print(describe(args.input, model, opts))
    return 0


# --- train -------------------------------------------------------------------------------------------------


def _ignore_value(text: str) -> int | str:
    """A raw mask value (255) or a colour (#9B9B9B) for palette masks."""
    try:
        return int(text)
    except ValueError:
        return text


def _class_weights(text: str) -> str | tuple[float, ...]:
    if text == "balanced":
        return text
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or weights like 1,2.5, got {text!r}") from None


def _add_train_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser(
        "train",
        parents=[common],
        help="train a U-Net on image/mask rasters",
        description="Train a U-Net on image/mask rasters; the best epoch is saved as a checkpoint for predict.",
    )
    t.add_argument("--config", help="YAML config (its train: section); flags override it")
    t.add_argument("--images", nargs="+", help="training image rasters (globs and {0..24} ranges allowed)")
    t.add_argument("--masks", nargs="+", help="their masks, in the same order")
    t.add_argument("--val-images", nargs="+", help="validation images (default: validate on the training set)")
    t.add_argument("--val-masks", nargs="+", help="validation masks")
    t.add_argument("--out", help="checkpoint to write (metrics CSV, curves PNG and resume file go beside it)")
    t.add_argument("--bands", type=_bands, help="1-based image bands, e.g. 4,3,2 (default: all)")
    t.add_argument("--class-names", nargs="+", help="class names (two for a binary model, background first)")
    t.add_argument("--mask-encoding", help="ids (default), binary (0/255) or palette (colours; palette in config)")
    t.add_argument("--ignore-value", type=_ignore_value, help="mask value (or #RRGGBB) of unlabelled pixels")
    t.add_argument("--base-width", type=int, help="U-Net channels at the first level (default 16)")
    t.add_argument("--depth", type=int, help="U-Net poolings (default 4)")
    t.add_argument("--tile", type=int, help="training tile size in pixels (default 256)")
    t.add_argument("--batch-size", type=int, help="tiles per step (default 4)")
    t.add_argument("--epochs", type=int, help="epochs (default 20)")
    t.add_argument("--steps-per-epoch", type=int, help="optimiser steps per epoch (default 50)")
    t.add_argument("--oversample", type=float, help="share of tiles centred on a randomly drawn class (0-1)")
    t.add_argument("--elastic", action=argparse.BooleanOptionalAction, default=None, help="elastic deformation")
    t.add_argument("--loss", help="bce, dice, bce+dice (binary); ce, ce+dice (multi-class)")
    t.add_argument("--class-weights", type=_class_weights, help="cross-entropy class weights: balanced or 1,2.5")
    t.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    t.add_argument("--schedule", help="cosine (default) or onecycle")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--amp", help="mixed precision on CUDA: auto (default), on or off")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--loader-workers", type=int, help="worker processes building training batches (default 0: none)")
    t.add_argument("--resume", action="store_true", default=None, help="continue from the resume file beside --out")
    t.add_argument("--overwrite", action="store_true", default=None, help="replace an existing checkpoint")
    t.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None, help="learning-curve PNG")
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def _print_epoch(row: dict[str, Any]) -> None:
    print(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
        f"val Dice {row['val_dice']:.4f}, IoU {row['val_iou']:.4f}, pixel error {row['val_pixel_error']:.4f} "
        f"({row['seconds']:.1f} s)",
        file=sys.stderr,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainOptions, options_from_config, train

    options = options_from_config(args.config) if args.config else TrainOptions()
    flags = {k: v for k, v in vars(args).items() if k not in {"command", "debug", "config"} and v is not None}
    if "progress" not in flags:
        flags["progress"] = sys.stderr.isatty()
    report = train(options.updated(**flags), on_epoch=_print_epoch)
    scores = report.scores
    best = (
        f"best epoch {report.best_epoch} of {report.epochs}: val Dice {scores.mean_dice:.4f}, IoU "
        f"{scores.mean_iou:.4f}, pixel error {scores.pixel_error:.4f}"
        if scores
        else "no epoch run"
    )
    extras = ", ".join(str(p) for p in (report.metrics, report.curves) if p is not None)
    print(
        f"wrote {report.checkpoint} ({best}); {extras}; {report.seconds:.1f} s "
        f"({report.cpu_seconds / 60:.1f} CPU-min) on {report.device}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            return _cmd_predict(args)
        if args.command == "train":
            return _cmd_train(args)
        return _cmd_info(args)
    except OptionError as exc:
        if args.debug:
            raise
        print(f"tilewise: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TilewiseError as exc:
        if args.debug:
            raise
        print(f"tilewise: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tilewise: interrupted; nothing was written to the output (continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"tilewise: internal error: {type(exc).__name__}: {message} (rerun with --debug)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
