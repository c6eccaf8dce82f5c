"""Checkpoints round-trip, and loading never runs code from the file or accepts a damaged one."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline import ModelCard, UNetConfig, build_model, load_checkpoint, read_card, save_checkpoint
from tiling import CheckpointError, Normalization

from .conftest import make_checkpoint


def test_round_trip_keeps_weights_and_card(tmp_path: Path) -> None:
    config = UNetConfig(in_channels=4, classes=3, base_width=4, depth=2, upsampling="bilinear", batch_norm=True)
    model = build_model(config)
    card = ModelCard(
        config,
        Normalization((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)),
        ("water", "land", "cloud"),
        tile_size=128,
        bands=(4, 3, 2, 8),
        band_names=("r", "g", "b", "nir"),
        info={"epochs": 3},
    )
    path = save_checkpoint(tmp_path / "m.safetensors", model, card)
    loaded = load_checkpoint(path)
    assert loaded.card == card
    assert read_card(path) == card
    x = torch.randn(1, 4, 32, 32)
    model.eval()
    torch.testing.assert_close(loaded.model(x), model(x))


def test_pickled_torch_file_is_refused_without_unpickling(tmp_path: Path) -> None:
    ran = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (ran,))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)
    assert not ran.exists()


def test_foreign_safetensors_is_not_a_tilewise_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a tilewise checkpoint"):
        load_checkpoint(path)


def test_modified_weights_fail_their_checksum(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_card_that_does_not_match_the_weights_is_refused(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.safetensors")
    tensors = load_checkpoint(path).model.state_dict()
    card = json.loads(read_card(path).to_json())
    card["model"]["base_width"] = 8
    from pipeline.checkpoint import FORMAT, _weights_digest

    metadata = {
        "format": FORMAT,
        "format_version": "1",
        "card": json.dumps(card),
        "weights_sha256": _weights_digest(tensors),
    }
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="does not match its architecture"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
