"""Augmentation of a training batch: flips, 90° rotations, brightness/contrast jitter and elastic deformation.

Everything draws from the ``torch.Generator`` it is given, so a batch's augmentation depends only on the seed.
Elastic deformation follows the U-Net paper: random displacements on a coarse ``grid`` × ``grid`` lattice with a
standard deviation of ``sigma`` pixels, interpolated bicubically to a per-pixel field; the image is resampled
bilinearly, the labels by nearest neighbour (so they stay class ids), reflecting at the tile's edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    flips: bool = True
    rotations: bool = True
    brightness: float = 0.0  # additive, in units of the normalised bands' std
    contrast: float = 0.0  # multiplicative: x · U(1 - c, 1 + c)
    elastic: bool = False
    elastic_sigma: float = 10.0
    elastic_grid: int = 3

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented copies of ``images`` (B, C, H, W) float and ``labels`` (B, H, W) int64."""
        if self.elastic and self.elastic_sigma > 0:
            images, labels = elastic(images, labels, self.elastic_sigma, self.elastic_grid, generator)
        out_images, out_labels = [], []
        for image, label in zip(images, labels, strict=True):
            if self.flips and _coin(generator):
                image, label = image.flip(-1), label.flip(-1)
            if self.flips and _coin(generator):
                image, label = image.flip(-2), label.flip(-2)
            if self.rotations and image.shape[-1] == image.shape[-2]:
                k = int(torch.randint(0, 4, (1,), generator=generator))
                image, label = torch.rot90(image, k, (-2, -1)), torch.rot90(label, k, (-2, -1))
            if self.contrast > 0:
                image = image * (1 + self.contrast * (2 * torch.rand(1, generator=generator) - 1))
            if self.brightness > 0:
                image = image + self.brightness * (2 * torch.rand(1, generator=generator) - 1)
            out_images.append(image)
            out_labels.append(label)
        return torch.stack(out_images).contiguous(), torch.stack(out_labels).contiguous()


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.rand(1, generator=generator) < 0.5)


def elastic(
    images: torch.Tensor, labels: torch.Tensor, sigma: float, grid: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random deformation of each sample (U-Net paper: 3 × 3 lattice, σ = 10 px, bicubic)."""
    b, _, h, w = images.shape
    coarse = torch.randn(b, 2, grid, grid, generator=generator) * sigma
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)  # (B, 2, H, W) pixels
    ys = torch.linspace(-1, 1, h).view(1, h, 1).expand(b, h, w)
    xs = torch.linspace(-1, 1, w).view(1, 1, w).expand(b, h, w)
    # pixels → normalised coordinates (align_corners=True: -1 and 1 are the centres of the edge pixels)
    gx = xs + field[:, 1] * 2 / max(w - 1, 1)
    gy = ys + field[:, 0] * 2 / max(h - 1, 1)
    sampling = torch.stack([gx, gy], dim=-1).to(images.dtype)
    warped = F.grid_sample(images, sampling, mode="bilinear", padding_mode="reflection", align_corners=True)
    warped_labels = F.grid_sample(
        labels[:, None].to(images.dtype), sampling, mode="nearest", padding_mode="reflection", align_corners=True
    )
    return warped, warped_labels[:, 0].round().long()
