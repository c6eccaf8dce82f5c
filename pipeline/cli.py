"""The ``tilewise`` command: a thin layer over the ``pipeline`` API.

Problems the user can fix print one line on stderr (``tilewise: error: …``) and exit non-zero: 2 for a bad
option or config, 1 for bad input, output or checkpoint. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tiling.errors import OptionError, TilewiseError, TilewiseWarning, command_line, notes

from . import arguments
from .config import load_config
from .options import PredictOptions

if TYPE_CHECKING:
    from .prediction import PredictReport

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    """The ``tilewise`` command's parser (see ``arguments``)."""
    return arguments.build_parser(arguments.add_train)


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
    if report.objects is not None:
        counts = ", ".join(f"{n} {name}" for name, n in report.objects.items()) or "none"
        parts.append(f"{sum(report.objects.values())} object(s) ({counts})")
    if report.polygons is not None:
        parts.append(f"{report.polygons} polygon(s)")
    if report.pixel_size_um:
        parts.append(f"{report.pixel_size_um[1]:.4g} µm/px")
    batch = f"batch {report.batch_size}" if report.batch_size else "no batch run"
    if report.backend:
        batch += f" ({report.backend})"
    parts.append(
        f"{report.chunks} chunk(s) of {report.chunk} px, {report.workers} in flight, {batch} on {report.device}, "
        f"{report.seconds:.1f} s"
    )
    if report.resumed:
        kept = report.chunks - report.chunks_computed
        parts.append(f"resumed: {report.chunks_computed} chunk(s) computed, {kept} kept from the earlier run")
    return ", ".join(parts)


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import describe

    opts, model = _predict_options(args)
    print(describe(args.input, model, opts, args.output))
    return 0


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
    autocast = f" under {report.precision} autocast" if report.precision != "fp32" else ""
    print(
        f"wrote {report.checkpoint} ({best}); {extras}; {report.seconds:.1f} s "
        f"({report.cpu_seconds / 60:.1f} CPU-min) on {report.device}{autocast}",
        file=sys.stderr,
    )
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _with_notes(error: BaseException, text: str) -> str:
    return "; ".join([text, *notes(error)])


def _interrupted(command: str, error: BaseException) -> str:
    if command == "predict":
        kept = notes(error)
        return "; ".join(["interrupted", *kept]) if kept else "interrupted before any chunk finished; nothing was kept"
    return "; ".join(["interrupted", *notes(error)])


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    """tilewise's own warnings as one line; other libraries' warnings stay off the terminal (see --debug)."""
    if issubclass(category, TilewiseWarning):
        print(f"tilewise: warning: {_one_line(str(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(), _library_logs(args.debug), command_line():
        if not args.debug:
            warnings.simplefilter("always", TilewiseWarning)
            warnings.showwarning = _show_warning
        return _run_command(args)


@contextlib.contextmanager
def _library_logs(debug: bool) -> Iterator[None]:
    """Libraries' log records (tifffile's, rasterio's, Dask's) reach the terminal only with ``--debug``: what a
    user must know comes as tilewise's own error or warning line."""
    root = logging.getLogger()
    handler: logging.Handler = logging.StreamHandler(sys.stderr) if debug else logging.NullHandler()
    level = root.level
    root.addHandler(handler)
    if debug:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _run_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "predict":
            return _cmd_predict(args)
        if args.command == "train":
            return _cmd_train(args)
        return _cmd_info(args)
    except OptionError as exc:
        if args.debug:
            raise
        print(f"tilewise: error: {_with_notes(exc, _one_line(str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except TilewiseError as exc:
        if args.debug:
            raise
        print(f"tilewise: error: {_with_notes(exc, _one_line(str(exc)))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        print(f"tilewise: {_interrupted(args.command, exc)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        message = f"{type(exc).__name__}: {_one_line(str(exc)) or type(exc).__name__} (rerun with --debug)"
        print(f"tilewise: internal error: {_with_notes(exc, message)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
