"""Geometry of a U-Net with valid (unpadded) convolutions, as in Ronneberger et al. (2015), Fig. 1.

With ``depth`` poolings (``k = 2**depth``) every level runs two valid 3×3 convs (−4 px), a 2×2 max-pool halves
the size and a 2×2 up-convolution doubles it. An input of ``x`` px is *legal* when every pooled map has an even
size and the deepest decoder level keeps at least one pixel: ``(x + 4) % k == 0`` and ``x >= 12k − 4``. The
output then has ``x − 2c`` px, with the *context* ``c = 2(3k − 2)`` lost on each side (depth 4: 572 → 388, c = 92).

The output shifts with the input only by multiples of ``k`` (the pooling windows must fall the same way), so
tiled prediction puts output tiles on a grid whose origins are multiples of ``k``: an output tile of ``T`` px
(a multiple of ``k``) is computed from the legal input ``T + 2c + tail``, the tile plus ``c`` on every side and a
``tail`` of 0 or 4 px at its bottom/right that makes the size legal (its extra output rows are dropped).

Torch-free: the tiling package plans with it, the model builds from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OptionError


@dataclass(frozen=True)
class ValidGeometry:
    """Sizes of a valid-convolution U-Net of ``depth`` poolings."""

    depth: int

    @property
    def multiple(self) -> int:
        """``k = 2**depth``: outputs shift with the input by multiples of this only."""
        return 2**self.depth

    @property
    def context(self) -> int:
        """Pixels lost on each side between input and output: ``c = 2(3k − 2)``."""
        return 2 * (3 * self.multiple - 2)

    @property
    def smallest_input(self) -> int:
        return 12 * self.multiple - 4

    def is_legal_input(self, size: int) -> bool:
        return size >= self.smallest_input and (size + 4) % self.multiple == 0

    def legal_inputs_near(self, size: int) -> tuple[int, ...]:
        """The legal input sizes nearest ``size``: the one below (if any) and the one above."""
        k = self.multiple
        below = (size + 4) // k * k - 4
        if below == size:
            below -= k
        above = below + k
        return tuple(s for s in (below, above) if s >= self.smallest_input) or (self.smallest_input,)

    def check_input(self, size: int, what: str = "input tile") -> None:
        """Refuse an input size the network cannot take, naming the nearest legal sizes."""
        if self.is_legal_input(size):
            return
        nearest = " or ".join(str(s) for s in self.legal_inputs_near(size))
        raise OptionError(
            f"{what} {size} does not fit a valid-convolution U-Net of depth {self.depth} (needs (size + 4) "
            f"divisible by {self.multiple} and at least {self.smallest_input}); nearest legal sizes: {nearest}"
        )

    def output_size(self, size: int) -> int:
        """Output pixels of a legal input of ``size`` pixels: ``size − 2c``."""
        self.check_input(size)
        return size - 2 * self.context

    def check_output_tile(self, tile: int) -> None:
        """Refuse an output tile whose origins could not all lie on multiples of ``k``, naming the nearest."""
        k = self.multiple
        if tile >= k and tile % k == 0:
            return
        below, above = tile // k * k, tile // k * k + k
        nearest = f"{below} or {above}" if below >= k else f"{above}"
        raise OptionError(
            f"output tile {tile} of a valid-convolution U-Net of depth {self.depth} must be a multiple of {k} "
            f"(tiles abut on origins that are multiples of {k}); nearest legal sizes: {nearest}"
        )

    def input_for_output(self, tile: int) -> int:
        """The smallest legal input whose output covers ``tile`` pixels."""
        k = self.multiple
        size = max(tile + 2 * self.context, self.smallest_input)
        return -(-(size + 4) // k) * k - 4

    def tail(self, tile: int) -> int:
        """Extra input (and output) pixels past an output tile's bottom/right edge that make its input legal."""
        return self.input_for_output(tile) - tile - 2 * self.context
