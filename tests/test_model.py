"""The U-Net's architecture follows the paper, and tile sizes it cannot halve are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline import UNetConfig, build_model
from tiling import OptionError


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_output_has_the_input_size_and_one_channel_per_class(upsampling: str, batch_norm: bool) -> None:
    model = build_model(in_channels=5, classes=3, base_width=4, depth=3, upsampling=upsampling, batch_norm=batch_norm)
    out = model(torch.randn(2, 5, 64, 48))
    assert out.shape == (2, 3, 64, 48)


def test_paper_structure_two_convs_per_level_channels_doubling() -> None:
    model = build_model(in_channels=1, classes=2, base_width=8, depth=4)
    widths = []
    for block in model.down:
        convs = [m for m in block if isinstance(m, nn.Conv2d)]
        assert len(convs) == 2 and all(c.kernel_size == (3, 3) for c in convs)
        assert sum(isinstance(m, nn.ReLU) for m in block) == 2
        widths.append(convs[-1].out_channels)
    assert widths == [8, 16, 32, 64, 128]
    assert isinstance(model.pool, nn.MaxPool2d) and model.pool.kernel_size == 2
    for level, up in enumerate(model.up):  # 2×2 up-convolution halves the channels
        assert isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (2, 2) and up.stride == (2, 2)
        assert up.out_channels == widths[level]
    for level, block in enumerate(model.decode):  # concatenation doubles the decoder's input channels
        assert block[0].in_channels == 2 * widths[level]
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 2


def test_batch_norm_is_optional() -> None:
    plain = build_model(base_width=4, depth=2)
    normed = build_model(base_width=4, depth=2, batch_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in normed.modules()) == 2 * (3 + 2)


@pytest.mark.parametrize(("tile", "nearest"), [(250, "240 or 256"), (100, "96 or 112"), (8, "16")])
def test_tile_the_depth_cannot_halve_is_refused_with_the_nearest_sizes(tile: int, nearest: str) -> None:
    with pytest.raises(OptionError, match=f"nearest valid sizes: {nearest}"):
        UNetConfig(depth=4).check_tile(tile)


@pytest.mark.parametrize("tile", [16, 32, 256, 272])
def test_valid_tiles_pass_and_keep_their_size(tile: int) -> None:
    UNetConfig(depth=4).check_tile(tile)  # raises for a tile the depth cannot halve
    model = build_model(base_width=2, depth=4)
    assert model(torch.zeros(1, 3, tile, tile)).shape == (1, 1, tile, tile)


@pytest.mark.parametrize("bad", [{"depth": 0}, {"classes": 0}, {"upsampling": "nearest"}])
def test_bad_architecture_is_refused(bad: dict) -> None:
    with pytest.raises(OptionError):
        UNetConfig(**bad)
