"""Augmentation of a training batch: flips, 90° rotations, brightness/contrast jitter, per-band colour jitter and
elastic deformation.

Colour jitter scales and shifts each band on its own (``colour``: x · U(1 − c, 1 + c) + U(−c, c) per band, in
normalised units), the way stains and scanners shift a slide's colours; brightness and contrast move every band
together.

Everything draws from the ``torch.Generator`` it is given, so a batch's augmentation depends only on the seed.
Elastic deformation follows the U-Net paper: random displacements on a coarse ``grid`` × ``grid`` lattice with a
standard deviation of ``sigma`` pixels, interpolated bicubically to a per-pixel field; the image is resampled
bilinearly, the labels by nearest neighbour (so they stay class ids), reflecting at the tile's edges. Per-pixel
loss weights, when a batch has them, move with the labels (resampled bilinearly) and draw nothing more.
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
    colour: float = 0.0  # per band: x · U(1 - c, 1 + c) + U(-c, c)
    elastic: bool = False
    elastic_sigma: float = 10.0
    elastic_grid: int = 3

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Augmented copies of ``images`` (B, C, H, W) float, ``labels`` (B, H, W) int64 and ``weights``
        (B, H, W) float (or None)."""
        if self.elastic and self.elastic_sigma > 0:
            images, labels, weights = elastic(images, labels, self.elastic_sigma, self.elastic_grid, generator, weights)
        out_images, out_labels, out_weights = [], [], []
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            moved = [label] if weights is None else [label, weights[index]]
            if self.flips and _coin(generator):
                image, moved = image.flip(-1), [m.flip(-1) for m in moved]
            if self.flips and _coin(generator):
                image, moved = image.flip(-2), [m.flip(-2) for m in moved]
            if self.rotations and image.shape[-1] == image.shape[-2]:
                k = int(torch.randint(0, 4, (1,), generator=generator))
                image, moved = torch.rot90(image, k, (-2, -1)), [torch.rot90(m, k, (-2, -1)) for m in moved]
            if self.contrast > 0:
                image = image * (1 + self.contrast * (2 * torch.rand(1, generator=generator) - 1))
            if self.brightness > 0:
                image = image + self.brightness * (2 * torch.rand(1, generator=generator) - 1)
            if self.colour > 0:
                bands = image.shape[0]
                scale = 1 + self.colour * (2 * torch.rand(bands, 1, 1, generator=generator) - 1)
                image = image * scale + self.colour * (2 * torch.rand(bands, 1, 1, generator=generator) - 1)
            out_images.append(image)
            out_labels.append(moved[0])
            out_weights.extend(moved[1:])
        stacked_weights = torch.stack(out_weights).contiguous() if out_weights else None
        return torch.stack(out_images).contiguous(), torch.stack(out_labels).contiguous(), stacked_weights


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.rand(1, generator=generator) < 0.5)


def elastic(
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    grid: int,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
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
    warped_weights = None
    if weights is not None:
        warped_weights = F.grid_sample(
            weights[:, None].to(images.dtype), sampling, mode="bilinear", padding_mode="reflection", align_corners=True
        )[:, 0]
    return warped, warped_labels[:, 0].round().long(), warped_weights
