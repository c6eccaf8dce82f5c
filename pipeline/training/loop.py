"""``train``: image/mask rasters in, a checkpoint that ``predict`` reads out.

    survey    = one streaming pass: band mean/std (the checkpoint's normalisation), where each class lies
    per epoch: steps_per_epoch batches of random tiles (augmented) → AdamW step → schedule step (``learner``)
               validation on a fixed grid, through prediction's forward pass (``validation``)
               → metrics CSV row, learning-curve PNG, resume file
               the best epoch (mean validation Dice) is saved as the checkpoint

Batches are drawn from generators seeded by (seed, epoch, step), so a run is reproducible on a CPU and a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.errors import NotGeoreferencedWarning
from tqdm import tqdm

from tiling.errors import OptionError, OutputError
from tiling.grid import resolve_overlap
from tiling.normalize import Normalization

from ..checkpoint import Checkpoint, ModelCard, save_checkpoint
from ..devices import resolve_device
from ..model import UNetConfig, build_model
from .augment import Augmentation
from .data import Pair, Survey, TileSampler, grid_tiles, open_pairs, read_tile, survey
from .learner import build_learner
from .losses import Loss, make_loss
from .masks import MaskEncoding
from .metrics import Scores
from .options import TrainOptions, options_from_config
from .paths import expand_paths
from .records import plot_curves, read_metrics, write_metrics
from .state import fingerprint, load_state, save_state
from .validation import validate

#: Batches prepared ahead of the training step by a reader thread.
PREFETCH = 2


@dataclass
class TrainReport:
    """What a run did; ``scores`` are the best epoch's validation scores, ``model`` the best model in memory
    (as saved at ``checkpoint``; None when a resumed run found no better epoch)."""

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
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RunFiles:
    checkpoint: Path
    metrics: Path
    curves: Path
    state: Path

    @classmethod
    def beside(cls, out: str | os.PathLike[str]) -> RunFiles:
        path = Path(out)
        stem = path.with_suffix("") if path.suffix == ".safetensors" else path
        return cls(
            path,
            stem.with_name(stem.name + ".metrics.csv"),
            stem.with_name(stem.name + ".curves.png"),
            stem.with_name(stem.name + ".train-state.pt"),
        )


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
    with warnings.catch_warnings():
        # PNG/JPEG training sets have no georeferencing, and need none
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return _train(opts, on_epoch)


def _train(opts: TrainOptions, on_epoch: Callable[[dict[str, Any]], None] | None) -> TrainReport:
    began, cpu_began = time.perf_counter(), time.process_time()
    if not opts.out:
        raise OptionError("no output checkpoint given: pass --out CKPT (or set out: in the config)")
    files = RunFiles.beside(opts.out)
    _check_outputs(files, opts)
    device = resolve_device(opts.device)
    amp = _amp(opts.amp, device)
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
    )
    config_.check_tile(opts.tile)
    pairs = open_pairs(images, masks, opts.bands, encoding, "training")
    val_pairs: list[Pair] = []
    try:
        if val_images or val_masks:
            val_pairs = open_pairs(val_images, val_masks, opts.bands, encoding, "validation")
        bands = len(pairs[0].image.bands)
        if val_pairs and len(val_pairs[0].image.bands) != bands:
            raise OptionError(f"validation images have {len(val_pairs[0].image.bands)} band(s), training {bands}")
        config_ = UNetConfig(**{**config_.to_mapping(), "in_channels": bands})
        found = survey(pairs, max(opts.tile // 2, 1), opts.class_names)
        settings = fingerprint(opts, images, masks, val_images + val_masks)
        _make_folder(files)
        run = _Run(opts, config_, pairs, val_pairs or pairs, found, device, amp, files, settings, on_epoch)
        if not val_pairs:
            print("tilewise: no validation set given; validating on the training rasters", file=sys.stderr)
        history = run.fit()
    finally:
        for pair in (*pairs, *val_pairs):
            pair.close()
    best = max(history, key=_score) if history else None
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
        cpu_seconds=time.process_time() - cpu_began,
        device=device,
        history=history,
    )


def _score(row: dict[str, Any]) -> float:
    value = float(row.get("val_dice", math.nan))
    return -math.inf if math.isnan(value) else value


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


def _amp(mode: str, device: str) -> bool:
    if mode == "on" and not device.startswith("cuda"):
        raise OptionError("amp (mixed precision) is for CUDA devices; on the CPU use amp: off")
    return mode != "off" and device.startswith("cuda")


class _Run:
    """One training run's state: the learner (model, optimiser, schedule, scaler) and the record."""

    def __init__(
        self,
        opts: TrainOptions,
        config: UNetConfig,
        pairs: Sequence[Pair],
        val_pairs: Sequence[Pair],
        found: Survey,
        device: str,
        amp: bool,
        files: RunFiles,
        settings: dict[str, Any],
        on_epoch: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.opts, self.config, self.pairs, self.val_pairs = opts, config, pairs, val_pairs
        self.found, self.device, self.amp, self.files, self.settings = found, device, amp, files, settings
        self.on_epoch = on_epoch
        self.sampler = TileSampler(pairs, found, opts.tile, opts.oversample)
        self.augment = Augmentation(
            opts.flips,
            opts.rotations,
            opts.brightness,
            opts.contrast,
            opts.elastic,
            opts.elastic_sigma,
            opts.elastic_grid,
        )
        self.class_weights = _class_weights(opts.class_weights, found.class_counts)
        self.loss: Loss = make_loss(opts.loss_name, opts.binary, self.class_weights)
        self.learner = build_learner(opts, config, device, amp)
        self.val_tiles = list(grid_tiles(val_pairs, opts.tile, resolve_overlap(opts.val_overlap, opts.tile)))
        self.history: list[dict[str, Any]] = []
        self.best_scores: Scores | None = None
        self.best_checkpoint: Checkpoint | None = None  # the saved best model, in memory (None after a resume)
        self.best = -math.inf
        self.start_epoch = 1
        if opts.resume:
            self._resume()

    # -- batches ---------------------------------------------------------------------------------------------

    def _batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.opts.seed, epoch, step])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        images, labels = [], []
        for _ in range(self.opts.batch_size):
            index, row, col = self.sampler.sample(rng)
            image, label = read_tile(self.pairs[index], row, col, self.opts.tile, self.found.normalization)
            images.append(image)
            labels.append(label)
        return self.augment(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)), generator)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _prefetch((self._batch(epoch, step) for step in range(self.opts.steps_per_epoch)), PREFETCH)

    # -- epochs ----------------------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        for epoch in range(self.start_epoch, self.opts.epochs + 1):
            began = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            val_loss, scores = self._validate()
            row: dict[str, Any] = {
                "epoch": epoch,
                "lr": self.learner.lr,
                "train_loss": train_loss,
                "val_loss": val_loss,
                **scores.as_row(),
                "seconds": time.perf_counter() - began,
            }
            self.history.append(row)
            if _score(row) > self.best:
                self.best, self.best_scores = _score(row), scores
                self._save_checkpoint(epoch, scores)
            self._save_state(epoch)
            write_metrics(self.files.metrics, self.history)
            if self.opts.plot:
                plot_curves(self.files.curves, self.history, self.opts.class_names)
            if self.on_epoch is not None:
                self.on_epoch(row)
        return self.history

    def _train_epoch(self, epoch: int) -> float:
        self.learner.model.train()
        total, steps = 0.0, 0
        bar = tqdm(
            self._batches(epoch),
            total=self.opts.steps_per_epoch,
            desc=f"epoch {epoch}/{self.opts.epochs}",
            disable=not self.opts.progress,
            file=sys.stderr,
            leave=False,
        )
        for images, labels in bar:
            value = self.learner.step(images.to(self.device), labels.to(self.device), self.loss)
            if not math.isfinite(value):
                raise OptionError(f"the training loss became {value} at epoch {epoch}; lower lr (now {self.opts.lr})")
            total += value
            steps += 1
            bar.set_postfix(loss=f"{value:.4f}")
        return total / max(steps, 1)

    def _validate(self) -> tuple[float, Scores]:
        return validate(
            self.learner.model,
            self.val_pairs,
            self.val_tiles,
            self.opts.tile,
            self.found.normalization,
            self.loss,
            self.opts.class_names,
            self.opts.batch_size,
            self.device,
            self.amp,
        )

    # -- files -----------------------------------------------------------------------------------------------

    def _save_checkpoint(self, epoch: int, scores: Scores) -> None:
        names = self.pairs[0].image.info.band_names
        info = {
            "trained": True,
            "epoch": epoch,
            "epochs": self.opts.epochs,
            "val_dice": scores.mean_dice,
            "val_iou": scores.mean_iou,
            "val_pixel_error": scores.pixel_error,
            "loss": self.opts.loss_name,
            "class_weights": self.class_weights,
            "tile": self.opts.tile,
            "seed": self.opts.seed,
        }
        card = ModelCard(
            self.config,
            self.found.normalization,
            tuple(self.opts.class_names),
            tile_size=self.opts.tile,
            bands=self.opts.bands,
            band_names=tuple(names) if names and all(isinstance(n, str) and n for n in names) else (),
            info=json.loads(json.dumps(info, allow_nan=True)),
        )
        model = build_model(self.config)
        model.load_state_dict({k: v.detach().cpu() for k, v in self.learner.model.state_dict().items()})
        save_checkpoint(self.files.checkpoint, model, card)
        self.best_checkpoint = Checkpoint(model.eval(), card)

    def _save_state(self, epoch: int) -> None:
        state = {"settings": json.dumps(self.settings), "epoch": epoch, "best": self.best}
        save_state(self.files.state, {**state, **self.learner.state_dict()})

    def _resume(self) -> None:
        state = load_state(self.files.state, self.settings)
        self.learner.load_state_dict(state)
        self.start_epoch = int(state["epoch"]) + 1
        self.history = [r for r in read_metrics(self.files.metrics) if int(r["epoch"]) < self.start_epoch]
        self.best = float(state["best"])
        best_rows = [r for r in self.history if _score(r) == self.best] if math.isfinite(self.best) else []
        self.best_scores = Scores.from_row(best_rows[0], self.opts.class_names) if best_rows else None


def _class_weights(setting: str | tuple[float, ...] | None, counts: np.ndarray) -> list[float] | None:
    """Per-class loss weights: as given, or ``balanced`` = total / (classes · count) for the classes present in
    the training masks (1 for absent ones), so each class carries the same total weight."""
    if setting is None:
        return None
    if setting != "balanced":
        return [float(w) for w in setting]
    present = counts > 0
    weights = np.ones(len(counts))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return [float(w) for w in weights]


def _prefetch(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """Produce ``batches`` in a reader thread, ``depth`` ahead of the consumer, in the same order."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:
            put(("error", exc))

    worker = threading.Thread(target=produce, name="tilewise-batches", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = out.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()
