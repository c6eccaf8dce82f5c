"""``train``: image/mask rasters in, a checkpoint that ``predict`` reads out.

    survey    = one streaming pass: band mean/std (the checkpoint's normalisation), where each class lies
    per epoch: steps_per_epoch batches of random tiles (augmented; ``batches``, read through a DataLoader)
               → AdamW step → schedule step (``learner``)
               validation on a fixed grid, through prediction's forward pass (``validation``)
               → metrics CSV row, learning-curve PNG, resume file (``run``)
               the best epoch (mean validation Dice) is saved as the checkpoint

Batches are functions of (seed, epoch, step), so a run is reproducible on a CPU whatever the number of loader
workers, and a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiling.errors import OptionError, OutputError, attach_note
from tiling.normalize import Normalization

from ..checkpoint import Checkpoint
from ..devices import resolve_device
from ..model import UNetConfig
from .data import Pair, open_pairs, survey
from .forward import AUTOCAST_NAMES, training_autocast
from .masks import MaskEncoding
from .metrics import Scores
from .options import TrainOptions, options_from_config
from .paths import expand_paths
from .run import Run, RunFiles, score
from .state import fingerprint
from .targets import target_rule


@dataclass
class TrainReport:
    """What a run did; ``scores`` are the best epoch's validation scores, ``model`` the best model in memory
    (as saved at ``checkpoint``; None when a resumed run found no better epoch). ``cpu_seconds`` counts the
    loader's workers too."""

    checkpoint: Path
    model: Checkpoint | None
    metrics: Path
    curves: Path | None
    state: Path
    epochs: int
    best_epoch: int
    scores: Scores | None
    normalization: Normalization
    seconds: float
    cpu_seconds: float
    device: str
    #: The training forward passes' precision: fp32, or bf16 / fp16 autocast (``--amp``).
    precision: str = "fp32"
    history: list[dict[str, Any]] = field(default_factory=list)


def train(
    options: TrainOptions | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> TrainReport:
    """Train a U-Net on image/mask rasters and save the best epoch as a checkpoint ``predict`` reads.

    ``train(images=[...], masks=[...], out="model.safetensors", epochs=10)``, or ``train(config="configs/
    isbi2012.yaml", out=...)`` (the config's ``train:`` section, with ``overrides`` on top). ``on_epoch`` gets
    each epoch's metrics row as it is written.
    """
    base = options_from_config(config) if config is not None else (options or TrainOptions())
    opts = base.updated(**overrides)
    return _train(opts, on_epoch)


def _train(opts: TrainOptions, on_epoch: Callable[[dict[str, Any]], None] | None) -> TrainReport:
    began, cpu_began = time.perf_counter(), time.process_time()
    if not opts.out:
        raise OptionError("no output checkpoint given: pass --out CKPT (or set out: in the config)")
    files = RunFiles.beside(opts.out)
    _check_outputs(files, opts)
    device = resolve_device(opts.device)
    autocast = training_autocast(opts.amp, device)
    if opts.threads:
        torch.set_num_threads(opts.threads)

    encoding = MaskEncoding.from_options(opts.mask_encoding, opts.class_names, opts.palette, opts.ignore_value)
    images, masks = expand_paths(opts.images), expand_paths(opts.masks)
    val_images, val_masks = expand_paths(opts.val_images), expand_paths(opts.val_masks)
    config_ = UNetConfig(
        in_channels=1,  # replaced below once the bands are known
        classes=1 if opts.binary else len(opts.class_names),
        base_width=opts.base_width,
        depth=opts.depth,
        upsampling=opts.upsampling,
        batch_norm=opts.batch_norm,
        padding=opts.padding,
    )
    config_.check_tile(opts.tile)
    rule = target_rule(opts)
    pairs = open_pairs(images, masks, opts.bands, encoding, "training", rule)
    val_pairs: list[Pair] = []
    try:
        if val_images or val_masks:
            val_pairs = open_pairs(val_images, val_masks, opts.bands, encoding, "validation", rule)
        bands = len(pairs[0].image.bands)
        if val_pairs and len(val_pairs[0].image.bands) != bands:
            raise OptionError(f"validation images have {len(val_pairs[0].image.bands)} band(s), training {bands}")
        config_ = UNetConfig(**{**config_.to_mapping(), "in_channels": bands})
        found = survey(pairs, max(opts.tile // 2, 1), opts.class_names)
        settings = fingerprint(opts, images, masks, val_images + val_masks)
        _make_folder(files)
        run = Run(opts, config_, pairs, val_pairs or pairs, found, device, autocast, files, settings, on_epoch)
        if not val_pairs:
            print("tilewise: no validation set given; validating on the training rasters", file=sys.stderr)
        if opts.resume:
            print(f"tilewise: {_resuming(run.start_epoch, opts.epochs, files)}", file=sys.stderr)
        try:
            history = run.fit()
        except KeyboardInterrupt as exc:
            attach_note(exc, _left_behind(run.history, files))
            raise
    finally:
        for pair in (*pairs, *val_pairs):
            pair.close()
    best = max(history, key=score) if history else None
    return TrainReport(
        checkpoint=files.checkpoint,
        model=run.best_checkpoint,
        metrics=files.metrics,
        curves=files.curves if opts.plot and files.curves.exists() else None,
        state=files.state,
        epochs=int(history[-1]["epoch"]) if history else 0,
        best_epoch=int(best["epoch"]) if best else 0,
        scores=run.best_scores,
        normalization=found.normalization,
        seconds=time.perf_counter() - began,
        cpu_seconds=time.process_time() - cpu_began + run.worker_cpu_seconds,
        device=device,
        precision=AUTOCAST_NAMES[autocast],
        history=history,
    )


def _check_outputs(files: RunFiles, opts: TrainOptions) -> None:
    if opts.resume and opts.overwrite:
        raise OptionError("--resume and --overwrite contradict each other: resume continues, overwrite restarts")
    if files.checkpoint.is_dir():
        raise OutputError(f"output {files.checkpoint} is a directory; give a checkpoint file name")
    if not opts.resume and not opts.overwrite:
        existing = [p for p in (files.checkpoint, files.state) if p.exists()]
        if existing:
            raise OutputError(f"{existing[0]} already exists; pass --overwrite to replace it or --resume to continue")
    folder = files.checkpoint.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK)):
        raise OutputError(f"cannot write {files.checkpoint}: {existing} is not a writable folder")


def _make_folder(files: RunFiles) -> None:
    """Create the checkpoint's folder (only once the inputs have passed their checks)."""
    try:
        files.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder for {files.checkpoint}: {exc.strerror}") from None


def _resuming(start: int, epochs: int, files: RunFiles) -> str:
    if start > epochs:
        return (
            f"the run in {files.state} has finished its {epochs} epochs; nothing to do (a larger --epochs extends it)"
        )
    return f"resuming at epoch {start} of {epochs} from {files.state}"


def _left_behind(history: list[dict[str, Any]], files: RunFiles) -> str:
    """What an interrupted run leaves, and whether ``--resume`` applies."""
    if not history:
        return "no epoch had finished, so nothing was saved (--resume needs one finished epoch: start again)"
    last = int(history[-1]["epoch"])
    return f"{files.checkpoint} holds the best of epochs 1–{last}; --resume continues at epoch {last + 1}"
