"""The U-Net of Ronneberger, Fischer & Brox (2015).

Per level two 3×3 conv + ReLU (optionally batch-normalised), 2×2 max-pool between levels and channels doubling
on the way down; on the way up ×2 upsampling, concatenation with the skip and two 3×3 convs; a 1×1 head.
``classes=1`` is a binary model (one sigmoid logit); more classes use softmax.

``padding="same"`` (the default) pads every conv so a tile keeps its size; ``padding="valid"`` is the paper's:
unpadded convs, each skip centre-cropped to the decoder's size, an output ``2c`` px smaller than the input
(``tiling.geometry``). Upsampling: ``transpose`` is the paper's 2×2 up-convolution (halving the channels);
``bilinear`` upsamples (align_corners=False) and halves the channels with a 1×1 conv; ``bilinear-concat``
upsamples (align_corners=True) and concatenates all the channels, so the decoder convs take 512+256, 256+128, …
(the design notes' network).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from tiling.errors import OptionError
from tiling.geometry import ValidGeometry

UPSAMPLING = ("transpose", "bilinear", "bilinear-concat")
PADDING = ("same", "valid")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; everything needed to rebuild it from a checkpoint."""

    in_channels: int = 3
    classes: int = 1
    base_width: int = 16
    depth: int = 4
    upsampling: str = "transpose"
    batch_norm: bool = False
    #: "same" (pads every conv, the output has the input's size) or "valid" (the paper's unpadded convs).
    padding: str = "same"

    def __post_init__(self) -> None:
        for name in ("in_channels", "classes", "base_width"):
            if getattr(self, name) < 1:
                raise OptionError(f"U-Net {name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.depth <= 8:
            raise OptionError(f"U-Net depth must be between 1 and 8, got {self.depth}")
        if self.upsampling not in UPSAMPLING:
            raise OptionError(f"unknown upsampling {self.upsampling!r} (expected {', '.join(UPSAMPLING)})")
        if self.padding not in PADDING:
            raise OptionError(f"unknown padding {self.padding!r} (expected same or valid)")

    @classmethod
    def from_mapping(cls, spec: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise OptionError(f"unknown U-Net setting(s) {sorted(unknown)} (known: {sorted(known)})")
        return cls(**spec)

    def to_mapping(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def size_multiple(self) -> int:
        """Tile sizes must be multiples of this (each level halves the size)."""
        return 2**self.depth

    @property
    def valid(self) -> bool:
        return self.padding == "valid"

    @property
    def geometry(self) -> ValidGeometry:
        """Input and output sizes of the valid-convolution network of this depth."""
        return ValidGeometry(self.depth)

    @property
    def context(self) -> int:
        """Pixels an output tile needs on each side from its input (0 for a 'same' model)."""
        return self.geometry.context if self.valid else 0

    def check_tile(self, tile: int) -> None:
        """Refuse a tile that ``depth`` poolings cannot halve cleanly, naming the nearest valid sizes.

        For a valid model ``tile`` is the output tile (see ``ValidGeometry.check_output_tile``)."""
        if self.valid:
            self.geometry.check_output_tile(tile)
            return
        m = self.size_multiple
        if tile >= m and tile % m == 0:
            return
        below, above = (tile // m) * m, (tile // m + 1) * m
        nearest = f"{below} or {above}" if below >= m else f"{above}"
        raise OptionError(
            f"tile {tile} does not halve cleanly through depth {self.depth} (needs a multiple of {m}); "
            f"nearest valid sizes: {nearest}"
        )


def _double_conv(in_ch: int, out_ch: int, batch_norm: bool, pad: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, o in ((in_ch, out_ch), (out_ch, out_ch)):
        layers.append(nn.Conv2d(i, o, kernel_size=3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(o))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _centre_crop(skip: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The centre ``rows`` × ``cols`` of a skip connection (a valid model's encoder maps are larger)."""
    top, left = (skip.shape[-2] - rows) // 2, (skip.shape[-1] - cols) // 2
    if top == 0 and left == 0:
        return skip
    return skip[..., top : top + rows, left : left + cols]


def _upsampled_width(widths: list[int], level: int, mode: str) -> int:
    """Channels coming out of the upsampling into decoder level ``level``."""
    return widths[level + 1] if mode == "bilinear-concat" else widths[level]


def _upsample(in_ch: int, out_ch: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
    if mode == "bilinear-concat":
        return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_ch, out_ch, kernel_size=1),
    )


class UNet(nn.Module):
    """U-Net returning logits of shape (batch, classes, H, W) for input (batch, in_channels, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_width * 2**level for level in range(config.depth + 1)]
        pad = 0 if config.valid else 1
        self.down = nn.ModuleList(
            _double_conv(config.in_channels if level == 0 else widths[level - 1], widths[level], config.batch_norm, pad)
            for level in range(config.depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            _upsample(widths[level + 1], widths[level], config.upsampling) for level in range(config.depth)
        )
        concat = [widths[level] + _upsampled_width(widths, level, config.upsampling) for level in range(config.depth)]
        self.decode = nn.ModuleList(
            _double_conv(concat[level], widths[level], config.batch_norm, pad) for level in range(config.depth)
        )
        self.head = nn.Conv2d(widths[0], config.classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < self.config.depth:
                skips.append(x)
                x = self.pool(x)
        for level in reversed(range(self.config.depth)):
            x = self.up[level](x)
            skip = _centre_crop(skips[level], x.shape[-2], x.shape[-1])
            x = self.decode[level](torch.cat([skip, x], dim=1))
        return self.head(x)


def build_model(config: UNetConfig | None = None, **settings: Any) -> UNet:
    """A freshly initialised U-Net from a config or keyword settings (``build_model(classes=3)``)."""
    return UNet(config or UNetConfig(**settings))


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for a binary (one-channel) model, softmax over classes otherwise; always float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def activation_bytes_per_tile(config: UNetConfig, tile: int) -> int:
    """Rough peak inference memory of one tile: the skips, a level's conv outputs and the concat at level 0."""
    floats = 0
    for level in range(config.depth + 1):
        side = tile // 2**level
        floats += 3 * config.base_width * 2**level * side * side
    floats += 2 * config.base_width * tile * tile + (config.in_channels + config.classes) * tile * tile
    return 5 * floats  # 4 bytes a float, plus a quarter for the allocator's slack (measured on CPU)


@functools.lru_cache(maxsize=16)
def parameter_bytes(config: UNetConfig) -> int:
    """Bytes of a model's float32 weights (counted on the meta device: nothing is allocated; once per config,
    as building the modules takes longer than a small run's planning)."""
    with torch.device("meta"):
        return 4 * sum(p.numel() for p in UNet(config).parameters())


def macs_per_pixel(config: UNetConfig) -> float:
    """Multiply-adds of one forward pass per input pixel, counted from the architecture.

    A conv does its kernel's multiply-adds at every output pixel, a 2×2 transposed conv its kernel's at every
    input pixel; level ``l`` has 1/4**l of the input's pixels. (Tracing a model on the meta device gives the
    same count but costs about a second the first time, for torch's meta kernels to load.)
    """
    widths = [config.base_width * 2**level for level in range(config.depth + 1)]
    total = 0.0
    for level, width in enumerate(widths):
        share = 4.0**-level  # pixels at this level per input pixel
        channels_in = config.in_channels if level == 0 else widths[level - 1]
        total += share * 9 * (channels_in * width + width * width)  # down: two 3×3 convs
        if level < config.depth:
            wider = widths[level + 1]
            if config.upsampling == "transpose":
                total += (share / 4) * (2 * 2 * wider * width)  # a 2×2 kernel at each pixel of the level below
            elif config.upsampling == "bilinear":
                total += share * wider * width  # 1×1 conv after the bilinear upsampling
            concat = width + _upsampled_width(widths, level, config.upsampling)
            total += share * 9 * (concat * width + width * width)  # up: two 3×3 convs after the concat
    return total + widths[0] * config.classes  # 1×1 head
