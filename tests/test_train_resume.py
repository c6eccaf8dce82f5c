"""Interrupting and resuming training through the command line: what an interrupted run says it left, the
"resuming at epoch N" line, and a finished run extended with a larger --epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import train
from pipeline.cli import main
from pipeline.training.run import Run
from sample_data.scene import synthesize

from .conftest import write_geotiff
from .test_train import TINY

FLAGS = ["--steps-per-epoch", "2", "--base-width", "4", "--depth", "2", "--tile", "64", "--no-plot"]
FLAGS += ["--class-names", "background", "building", "--batch-size", "4"]


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    rgb, truth = synthesize(0, 0, 128, 128, seed=5)
    return write_geotiff(tmp_path / "scene.tif", np.maximum(rgb, 1)), write_geotiff(tmp_path / "truth.tif", truth[None])


def cli(capsys, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def interrupt_in_epoch(monkeypatch, stop: int) -> None:
    train_epoch = Run._train_epoch

    def stopping(self, epoch, batches):  # type: ignore[no-untyped-def]
        if epoch == stop:
            raise KeyboardInterrupt
        return train_epoch(self, epoch, batches)

    monkeypatch.setattr(Run, "_train_epoch", stopping)


def test_interrupted_in_the_first_epoch_says_nothing_was_saved(scene, tmp_path: Path, capsys, monkeypatch) -> None:
    image, mask = scene
    out = tmp_path / "m.safetensors"
    interrupt_in_epoch(monkeypatch, 1)
    code, err = cli(capsys, "train", "--images", image, "--masks", mask, "--out", out, "--epochs", "2", *FLAGS)
    assert code == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("tilewise: interrupted; no epoch had finished, so nothing was saved"), last
    assert "start again" in last and not out.exists()


def test_interrupted_later_names_the_checkpoint_and_resume_continues(
    scene, tmp_path: Path, capsys, monkeypatch
) -> None:
    image, mask = scene
    out = tmp_path / "m.safetensors"
    argv = ["train", "--images", image, "--masks", mask, "--out", out, "--epochs", "3", *FLAGS]
    with monkeypatch.context() as patch:
        interrupt_in_epoch(patch, 2)
        code, err = cli(capsys, *argv)
    assert code == 130 and out.exists()
    last = err.strip().splitlines()[-1]
    assert last == f"tilewise: interrupted; {out} holds the best of epochs 1–1; --resume continues at epoch 2", last
    code, err = cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert "tilewise: resuming at epoch 2 of 3 from " in err
    assert "epoch 2:" in err and "epoch 3:" in err and "epoch 1:" not in err


def test_a_finished_run_extends_with_more_epochs_on_the_longer_schedule(scene, tmp_path: Path, capsys) -> None:
    image, mask = scene
    common = {"images": [str(image)], "masks": [str(mask)], "steps_per_epoch": 2, "schedule": "onecycle", **TINY}
    longer = train(out=str(tmp_path / "three.safetensors"), epochs=3, **common)
    out = tmp_path / "m.safetensors"
    train(out=str(out), epochs=1, **common)
    capsys.readouterr()
    extended = train(out=str(out), epochs=3, resume=True, **common)
    assert [r["epoch"] for r in extended.history] == [1, 2, 3]
    assert "resuming at epoch 2 of 3" in capsys.readouterr().err
    # epochs 2 and 3 follow the 3-epoch schedule from where it stands after epoch 1
    assert [r["lr"] for r in extended.history[1:]] == pytest.approx([r["lr"] for r in longer.history[1:]], rel=1e-9)

    again = train(out=str(out), epochs=3, resume=True, **common)  # finished: nothing to do
    assert [r["epoch"] for r in again.history] == [1, 2, 3]
    assert "has finished its 3 epochs" in capsys.readouterr().err

    flags = ["--steps-per-epoch", "2", "--schedule", "onecycle", *FLAGS[2:], "--threads", "2"]
    code, err = cli(
        capsys, "train", "--images", image, "--masks", mask, "--out", out, "--epochs", "2", "--resume", *flags
    )
    assert code == 2 and "has trained 3 epochs already; epochs must be at least 3" in err, err
    assert len(err.strip().splitlines()) == 1
