"""The paper's valid-convolution U-Net: legal sizes, output sizes, errors naming the nearest legal sizes; the
design notes' bilinear-concat variant; the card records the padding and old cards load as 'same'."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pipeline import UNetConfig, build_model
from pipeline.checkpoint import ModelCard, load_checkpoint, read_card, save_checkpoint
from tiling import OptionError
from tiling.geometry import ValidGeometry
from tiling.normalize import Normalization


def test_the_papers_tile_572_gives_388_with_context_92() -> None:
    geometry = ValidGeometry(4)
    assert (geometry.multiple, geometry.context) == (16, 92)
    assert geometry.output_size(572) == 388
    assert geometry.input_for_output(384) == 572 and geometry.tail(384) == 4
    model = build_model(in_channels=1, classes=2, base_width=2, depth=4, padding="valid")
    with torch.inference_mode():
        assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_every_legal_size_runs_and_gives_input_minus_twice_the_context(depth: int) -> None:
    geometry = ValidGeometry(depth)
    k, c = geometry.multiple, geometry.context
    assert c == 2 * (3 * k - 2)
    model = build_model(in_channels=1, classes=1, base_width=2, depth=depth, padding="valid").eval()
    legal = [s for s in range(1, 12 * k + 3 * k) if geometry.is_legal_input(s)]
    assert legal[0] == 12 * k - 4 and all((s + 4) % k == 0 for s in legal)
    with torch.inference_mode():
        for size in legal:
            assert model(torch.zeros(1, 1, size, size + k)).shape[-2:] == (size - 2 * c, size + k - 2 * c)
        if depth > 1:  # one step below the smallest legal size the network has no pixel left (depth 1: 2 px)
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, 1, legal[0] - k, legal[0] - k))


@pytest.mark.parametrize(
    ("size", "nearest"), [(570, "556 or 572"), (573, "572 or 588"), (100, "188"), (187, "188"), (189, "188 or 204")]
)
def test_illegal_input_sizes_name_the_nearest_legal_ones(size: int, nearest: str) -> None:
    with pytest.raises(OptionError, match=f"nearest legal sizes: {nearest}$"):
        ValidGeometry(4).check_input(size)


@pytest.mark.parametrize(("tile", "nearest"), [(250, "240 or 256"), (388, "384 or 400"), (8, "16")])
def test_a_valid_models_output_tile_must_be_a_multiple_of_k(tile: int, nearest: str) -> None:
    with pytest.raises(OptionError, match=f"output tile {tile} .* nearest legal sizes: {nearest}$"):
        UNetConfig(depth=4, padding="valid").check_tile(tile)
    UNetConfig(depth=4, padding="valid").check_tile(384)


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_an_output_tile_is_computed_from_the_smallest_legal_input_covering_it(depth: int) -> None:
    geometry = ValidGeometry(depth)
    k, c = geometry.multiple, geometry.context
    for tile in range(k, 20 * k, k):
        size = geometry.input_for_output(tile)
        assert geometry.is_legal_input(size) and size - 2 * c >= tile
        assert not geometry.is_legal_input(size - k) or size - k - 2 * c < tile
        if tile >= 4:  # smaller tiles (depth 1: 2 px) are computed from the smallest legal input
            assert geometry.tail(tile) == (4 if k >= 8 else 0)


def test_valid_convs_are_unpadded_and_skips_are_centre_cropped() -> None:
    model = build_model(in_channels=1, classes=1, base_width=2, depth=2, padding="valid")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(m.padding == (0, 0) for m in convs)
    seen: list[tuple[int, ...]] = []
    model.decode[1].register_forward_pre_hook(lambda _m, inputs: seen.append(tuple(inputs[0].shape)))
    model.decode[0].register_forward_pre_hook(lambda _m, inputs: seen.append(tuple(inputs[0].shape)))
    with torch.inference_mode():
        model(torch.zeros(1, 1, 92, 92))  # 92 → 88 ↓44 → 40 ↓20 → 16 ↑32 → 28 ↑56 → 52
    assert seen == [(1, 8, 32, 32), (1, 4, 56, 56)]


def test_the_design_notes_network_has_7782978_parameters_and_concatenates_whole_upsampled_maps() -> None:
    config = UNetConfig(in_channels=3, classes=2, base_width=64, depth=3, upsampling="bilinear-concat")
    with torch.device("meta"):
        model = build_model(config)
        assert sum(p.numel() for p in model.parameters()) == 7_782_978
        halving = build_model(in_channels=3, classes=2, base_width=64, depth=3, upsampling="bilinear")
        assert sum(p.numel() for p in halving.parameters()) == 7_181_314
    assert [block[0].in_channels for block in model.decode] == [128 + 64, 256 + 128, 512 + 256]
    assert [block[0].out_channels for block in model.decode] == [64, 128, 256]
    assert all(isinstance(up, nn.Upsample) and up.align_corners for up in model.up)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    small = build_model(in_channels=3, classes=2, base_width=4, depth=3, upsampling="bilinear-concat")
    with torch.inference_mode():
        assert small(torch.zeros(1, 3, 48, 40)).shape == (1, 2, 48, 40)


def test_the_card_records_the_padding_and_old_cards_load_as_same(tmp_path) -> None:
    config = UNetConfig(in_channels=1, classes=1, base_width=2, depth=2, padding="valid")
    card = ModelCard(config, Normalization((0.0,), (1.0,)), ("bg", "fg"), tile_size=32)
    path = save_checkpoint(tmp_path / "valid.safetensors", build_model(config), card)
    assert read_card(path).model.padding == "valid"
    assert load_checkpoint(path).model.config.padding == "valid"
    old = json.loads(card.to_json())
    del old["model"]["padding"]  # a card written before the padding existed
    assert ModelCard.from_json(json.dumps(old)).model.padding == "same"
    with pytest.raises(OptionError, match="unknown padding"):
        UNetConfig(padding="reflect")


def test_a_valid_models_chunk_reads_its_context_and_plans_for_it() -> None:
    from pipeline.memory_model import ChunkCost

    same, valid = ChunkCost(3, 2, 1), ChunkCost(3, 2, 1, context=ValidGeometry(4).input_for_output(256) - 256)
    assert valid.context == 188
    input_bytes = ((1024 + 256 + 188) ** 2 - (1024 + 256) ** 2) * (3 * 1 + 1 + 2)
    extent, chunk = (1280, 1280), (1024, 1024)
    assert valid.per_chunk(extent, chunk) - same.per_chunk(extent, chunk) == input_bytes
