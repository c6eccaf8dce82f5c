"""The U-Net of Ronneberger, Fischer & Brox (2015), with 'same' padding so tiles keep their size.

Per level two 3×3 conv + ReLU (optionally batch-normalised), 2×2 max-pool between levels and channels doubling
on the way down; on the way up ×2 upsampling (2×2 transposed conv as in the paper, or bilinear followed by a
1×1 conv), concatenation with the skip and two 3×3 convs; a 1×1 head. ``classes=1`` is a binary model (one
sigmoid logit); more classes use softmax.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from tiling.errors import OptionError

UPSAMPLING = ("transpose", "bilinear")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; everything needed to rebuild it from a checkpoint."""

    in_channels: int = 3
    classes: int = 1
    base_width: int = 16
    depth: int = 4
    upsampling: str = "transpose"
    batch_norm: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "classes", "base_width"):
            if getattr(self, name) < 1:
                raise OptionError(f"U-Net {name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.depth <= 8:
            raise OptionError(f"U-Net depth must be between 1 and 8, got {self.depth}")
        if self.upsampling not in UPSAMPLING:
            raise OptionError(f"unknown upsampling {self.upsampling!r} (expected transpose or bilinear)")

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

    def check_tile(self, tile: int) -> None:
        """Refuse a tile that ``depth`` poolings cannot halve cleanly, naming the nearest valid sizes."""
        m = self.size_multiple
        if tile >= m and tile % m == 0:
            return
        below, above = (tile // m) * m, (tile // m + 1) * m
        nearest = f"{below} or {above}" if below >= m else f"{above}"
        raise OptionError(
            f"tile {tile} does not halve cleanly through depth {self.depth} (needs a multiple of {m}); "
            f"nearest valid sizes: {nearest}"
        )


def _double_conv(in_ch: int, out_ch: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, o in ((in_ch, out_ch), (out_ch, out_ch)):
        layers.append(nn.Conv2d(i, o, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(o))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _upsample(in_ch: int, out_ch: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
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
        self.down = nn.ModuleList(
            _double_conv(config.in_channels if level == 0 else widths[level - 1], widths[level], config.batch_norm)
            for level in range(config.depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            _upsample(widths[level + 1], widths[level], config.upsampling) for level in range(config.depth)
        )
        self.decode = nn.ModuleList(
            _double_conv(2 * widths[level], widths[level], config.batch_norm) for level in range(config.depth)
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
            x = self.decode[level](torch.cat([skips[level], x], dim=1))
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


def parameter_bytes(config: UNetConfig) -> int:
    """Bytes of a model's float32 weights (counted on the meta device: nothing is allocated)."""
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
            else:
                total += share * wider * width  # 1×1 conv after the bilinear upsampling
            total += share * 9 * (2 * width * width + width * width)  # up: two 3×3 convs after the concat
    return total + widths[0] * config.classes  # 1×1 head
