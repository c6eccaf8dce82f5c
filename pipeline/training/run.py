"""The epoch loop of a training run: train on the loader's batches, validate, record, save, resume."""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tiling.errors import OptionError
from tiling.grid import resolve_overlap
from tiling.instances import InstanceSpec

from ..checkpoint import Checkpoint, ModelCard, save_checkpoint
from ..model import UNetConfig, build_model
from .augment import Augmentation
from .batches import Batch, BatchSpec, BatchStream, TrainingBatches, loading
from .data import Pair, Survey, TileSampler
from .forward import AUTOCAST_NAMES
from .learner import build_learner
from .losses import Loss, make_loss
from .metrics import Scores
from .options import TrainOptions
from .records import plot_curves, read_metrics, write_metrics
from .state import load_state, planned_epochs, save_state
from .validation import ValidationGrid, validate
from .windows import training_tile


@dataclass(frozen=True)
class RunFiles:
    """Where a run writes: the checkpoint, and beside it the metrics CSV, the curves PNG and the resume file."""

    checkpoint: Path
    metrics: Path
    curves: Path
    state: Path

    @classmethod
    def beside(cls, out: str | Path) -> RunFiles:
        path = Path(out)
        stem = path.with_suffix("") if path.suffix == ".safetensors" else path
        return cls(
            path,
            stem.with_name(stem.name + ".metrics.csv"),
            stem.with_name(stem.name + ".curves.png"),
            stem.with_name(stem.name + ".train-state.pt"),
        )


def score(row: dict[str, Any]) -> float:
    """What picks the best epoch: mean validation Dice (an epoch without one never wins)."""
    value = float(row.get("val_dice", math.nan))
    return -math.inf if math.isnan(value) else value


class Run:
    """One training run's state: the learner, the batches, the record and the best epoch so far."""

    def __init__(
        self,
        opts: TrainOptions,
        config: UNetConfig,
        pairs: Sequence[Pair],
        val_pairs: Sequence[Pair],
        found: Survey,
        device: str,
        autocast: torch.dtype | None,
        files: RunFiles,
        settings: dict[str, Any],
        on_epoch: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.opts, self.config, self.pairs = opts, config, pairs
        self.found, self.device, self.files, self.settings = found, device, files, settings
        self.autocast = autocast
        # Validation scores the labels ``predict`` writes: in float32 on a CPU (predict's default precision);
        # under float16 autocast on CUDA when training uses it (a GPU's validation time).
        self.validation_autocast = autocast if autocast == torch.float16 else None
        self.on_epoch = on_epoch
        augment = Augmentation(
            opts.flips,
            opts.rotations,
            opts.brightness,
            opts.contrast,
            opts.colour,
            opts.elastic,
            opts.elastic_sigma,
            opts.elastic_grid,
        )
        spec = BatchSpec(opts.seed, opts.epochs, opts.steps_per_epoch, opts.batch_size, opts.tile)
        sampler = TileSampler(pairs, found, opts.tile, opts.oversample)
        window = training_tile(config, opts.tile)
        self.batches = TrainingBatches(spec, pairs, sampler, found.normalization, augment, window)
        overlap = resolve_overlap(opts.val_overlap, opts.tile)
        self.validation = ValidationGrid.over(
            val_pairs, opts.tile, overlap, found.normalization, opts.class_names, opts.batch_size, window
        )
        self.class_weights = class_weights(opts.class_weights, found.class_counts)
        self.loss: Loss = make_loss(opts.loss_name, opts.binary, self.class_weights)
        self.learner = build_learner(opts, config, device, autocast)
        self.history: list[dict[str, Any]] = []
        self.best_scores: Scores | None = None
        self.best_checkpoint: Checkpoint | None = None  # the saved best model, in memory (None after a resume)
        self.best = -math.inf
        self.start_epoch = 1
        self.batch_stream: BatchStream | None = None  # once ``fit`` has started the loader
        if opts.resume:
            self._resume()

    @property
    def worker_cpu_seconds(self) -> float:
        """CPU time of the loader's workers (not counted in this process's)."""
        return self.batch_stream.worker_cpu_seconds if self.batch_stream is not None else 0.0

    def fit(self) -> list[dict[str, Any]]:
        if self.start_epoch > self.opts.epochs:
            return self.history  # a resumed run that had finished: no workers to start
        with loading(self.batches, self.start_epoch, self.opts.loader_workers, self.device) as batches:
            self.batch_stream = batches
            for epoch in range(self.start_epoch, self.opts.epochs + 1):
                began = time.perf_counter()
                train_loss = self._train_epoch(epoch, itertools.islice(batches, self.opts.steps_per_epoch))
                model = self.learner.model
                val_loss, scores = validate(model, self.validation, self.loss, self.device, self.validation_autocast)
                row: dict[str, Any] = {
                    "epoch": epoch,
                    "lr": self.learner.lr,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    **scores.as_row(),
                    "seconds": time.perf_counter() - began,
                }
                self._record(epoch, row, scores)
        return self.history

    def _train_epoch(self, epoch: int, batches: Iterator[Batch]) -> float:
        self.learner.model.train()
        total, steps = 0.0, 0
        bar = tqdm(
            batches,
            total=self.opts.steps_per_epoch,
            desc=f"epoch {epoch}/{self.opts.epochs}",
            disable=not self.opts.progress,
            file=sys.stderr,
            leave=False,
        )
        pinned = self.device.startswith("cuda")
        for images, labels, weights in bar:
            images = images.to(self.device, non_blocking=pinned)
            labels = labels.to(self.device, non_blocking=pinned)
            if weights is not None:
                weights = weights.to(self.device, non_blocking=pinned)
            value = self.learner.step(images, labels, self.loss, weights)
            if not math.isfinite(value):
                raise OptionError(f"the training loss became {value} at epoch {epoch}; lower lr (now {self.opts.lr})")
            total += value
            steps += 1
            bar.set_postfix(loss=f"{value:.4f}")
        return total / max(steps, 1)

    def _record(self, epoch: int, row: dict[str, Any], scores: Scores) -> None:
        self.history.append(row)
        if score(row) > self.best:
            self.best, self.best_scores = score(row), scores
            self._save_checkpoint(epoch, scores)
        state = {"settings": json.dumps(self.settings), "epoch": epoch, "best": self.best}
        save_state(self.files.state, {**state, **self.learner.state_dict()})
        write_metrics(self.files.metrics, self.history)
        if self.opts.plot:
            plot_curves(self.files.curves, self.history, self.opts.class_names)
        if self.on_epoch is not None:
            self.on_epoch(row)

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
            "training_precision": AUTOCAST_NAMES[self.autocast],
        }
        if self.opts.weighted:
            info["weight_map"] = {
                "w0": self.opts.w0,
                "sigma": self.opts.weight_sigma,
                "class_weights": self.class_weights,
            }
        if self.opts.mask_encoding == "instances":
            info["boundary_width"] = self.opts.boundary_width
        info.update(self.opts.about or {})
        card = ModelCard(
            self.config,
            self.found.normalization,
            tuple(self.opts.class_names),
            tile_size=self.opts.tile,
            bands=self.opts.bands,
            band_names=tuple(names) if names and all(isinstance(n, str) and n for n in names) else (),
            info=json.loads(json.dumps(info, allow_nan=True)),
            instances=self._instance_spec(),
            pixel_size_um=self.opts.mpp,
        )
        model = build_model(self.config)
        model.load_state_dict({k: v.detach().cpu() for k, v in self.learner.model.state_dict().items()})
        save_checkpoint(self.files.checkpoint, model, card)
        self.best_checkpoint = Checkpoint(model.eval(), card)

    def _instance_spec(self) -> InstanceSpec | None:
        """How ``predict`` finds the objects of a model trained on instance masks: seeds of each object class,
        the boundary class given back to the nearest within the boundary's width."""
        if self.opts.mask_encoding != "instances":
            return None
        boundary = len(self.opts.class_names) - 1
        return InstanceSpec(tuple(range(1, boundary)), (boundary,), self.opts.boundary_width, self.opts.min_object_area)

    def _resume(self) -> None:
        state = load_state(self.files.state, self.settings)
        trained = int(state["epoch"])
        stretched = planned_epochs(state) != self.opts.epochs
        self.learner.load_state_dict(state, trained * self.opts.steps_per_epoch if stretched else None)
        self.start_epoch = trained + 1
        self.history = [r for r in read_metrics(self.files.metrics) if int(r["epoch"]) < self.start_epoch]
        self.best = float(state["best"])
        best_rows = [r for r in self.history if score(r) == self.best] if math.isfinite(self.best) else []
        self.best_scores = Scores.from_row(best_rows[0], self.opts.class_names) if best_rows else None


def class_weights(setting: str | tuple[float, ...] | None, counts: np.ndarray) -> list[float] | None:
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
