"""Training data read lazily from image/mask raster pairs: a survey pass, random tiles, a validation grid.

Nothing reads a raster whole. ``survey`` streams each pair once in blocks to get the per-band mean/std (the
checkpoint's normalisation) and a coarse map of where each class lies (``cell``-pixel cells), so random tiles
can be drawn centred on rare classes. Tiles are then read window by window through the project's readers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tiling.errors import InputError
from tiling.grid import axis_origins
from tiling.normalize import Normalization
from tiling.plan import Span
from tiling.readers import RasterReader, open_raster
from tiling.readers.palette import expand_palette

from .masks import IGNORE, MaskEncoding
from .targets import TargetRule

#: Rows/cols read at a time by the survey pass.
SURVEY_BLOCK = 1024
#: A 0/255 mask whose largest value is below this is taken for a 0/1 mask (an error, not all background).
BINARY_MIN_MAX = 64


@dataclass
class Pair:
    """An image raster and its mask, of the same size, and how the mask becomes targets."""

    image: RasterReader
    mask: RasterReader
    encoding: MaskEncoding
    rule: TargetRule = field(default_factory=TargetRule)

    @property
    def height(self) -> int:
        return self.image.info.height

    @property
    def width(self) -> int:
        return self.image.info.width

    @property
    def name(self) -> str:
        return self.image.info.path

    def read_raw(
        self, rows: Span, cols: Span, weighted: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Raw image (bands, h, w) as stored, its validity (h, w), labels (h, w) int64 and the separation weights
        (h, w) float32 (None without a weight map, or unless ``weighted``) of a window inside the raster; pixels
        whose image is invalid are labelled ``IGNORE`` and weigh nothing."""
        data, valid = self.image.read(rows, cols)
        labels, weights = self.targets(rows, cols, weighted)
        labels[~valid] = IGNORE
        if weights is not None:
            weights[~valid] = 0.0
        return data, valid, labels, weights

    def targets(self, rows: Span, cols: Span, weighted: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The targets of a window, from the mask read with the rule's margin around it (the weights only when
        ``weighted``: validation scores labels alone)."""
        rule = self.rule if weighted else replace(self.rule, w0=0.0)
        margin = rule.margin
        outer_rows = Span(max(rows.start - margin, 0), min(rows.stop + margin, self.height))
        outer_cols = Span(max(cols.start - margin, 0), min(cols.stop + margin, self.width))
        labels, weights = rule.targets(self.decode(outer_rows, outer_cols))
        ys = slice(rows.start - outer_rows.start, rows.stop - outer_rows.start)
        xs = slice(cols.start - outer_cols.start, cols.stop - outer_cols.start)
        return labels[ys, xs].copy(), None if weights is None else weights[ys, xs].copy()

    def decode(self, rows: Span, cols: Span) -> np.ndarray:
        raw, valid = self.mask.read(rows, cols)
        where = f"{self.mask.info.path} (rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop})"
        return self.encoding.decode(raw, where, valid)

    def close(self) -> None:
        self.image.close()
        self.mask.close()


def open_pairs(
    images: Sequence[str],
    masks: Sequence[str],
    bands: tuple[int, ...] | None,
    encoding: MaskEncoding,
    what: str,
    rule: TargetRule | None = None,
) -> list[Pair]:
    """Open and check ``images[i]`` with ``masks[i]``; ``what`` names the set in errors ("training")."""
    if not images:
        raise InputError(f"no {what} images given")
    if len(images) != len(masks):
        raise InputError(f"{len(images)} {what} image(s) but {len(masks)} mask(s); give one mask per image")
    pairs: list[Pair] = []
    try:
        for image_path, mask_path in zip(images, masks, strict=True):
            image = open_raster(image_path, bands)
            try:
                mask = expand_palette(open_raster(mask_path)) if encoding.kind == "palette" else open_raster(mask_path)
            except BaseException:
                image.close()
                raise
            pair = Pair(image, mask, encoding, rule or TargetRule())
            pairs.append(pair)
            encoding.check_raster(mask.info)
            if (image.info.height, image.info.width) != (mask.info.height, mask.info.width):
                raise InputError(
                    f"image {image_path} is {image.info.height} x {image.info.width} pixels but its mask "
                    f"{mask_path} is {mask.info.height} x {mask.info.width}; they must match"
                )
        bands_seen = {len(p.image.bands) for p in pairs}
        if len(bands_seen) > 1:
            raise InputError(f"{what} images have different band counts {sorted(bands_seen)}; select with bands")
    except BaseException:
        for pair in pairs:
            pair.close()
        raise
    return pairs


@dataclass(frozen=True)
class Survey:
    """What one streaming pass over the training pairs found."""

    normalization: Normalization
    class_counts: np.ndarray  # (classes,) labelled pixels per class
    cell: int
    cell_counts: list[np.ndarray]  # per pair: (cells_y, cells_x, classes) pixels per class and cell


def survey(pairs: Sequence[Pair], cell: int, class_names: Sequence[str]) -> Survey:
    """Band statistics over valid image pixels and per-cell class counts, block by block."""
    classes = len(class_names)
    bands = len(pairs[0].image.bands)
    total = np.zeros(bands, dtype=np.float64)
    total_sq = np.zeros(bands, dtype=np.float64)
    n_valid = 0
    block = max(cell, SURVEY_BLOCK // cell * cell)
    cell_counts: list[np.ndarray] = []
    for pair in pairs:
        counts = np.zeros((-(-pair.height // cell), -(-pair.width // cell), classes), dtype=np.int64)
        raw_max = 0
        for r0 in range(0, pair.height, block):
            for c0 in range(0, pair.width, block):
                rows, cols = Span(r0, min(r0 + block, pair.height)), Span(c0, min(c0 + block, pair.width))
                data, valid = pair.image.read(rows, cols)
                raw, mask_valid = pair.mask.read(rows, cols)
                if pair.encoding.kind == "binary" and mask_valid.any():
                    raw_max = max(raw_max, int(raw[0][mask_valid].max()))
                where = f"{pair.mask.info.path} (rows {r0}:{rows.stop}, cols {c0}:{cols.stop})"
                labels = pair.rule.classes(pair.encoding.decode(raw, where, mask_valid))
                labels[~valid] = IGNORE
                pixels = data[:, valid].astype(np.float64)
                total += pixels.sum(axis=1)
                total_sq += (pixels**2).sum(axis=1)
                n_valid += pixels.shape[1]
                _count_cells(labels, counts, r0 // cell, c0 // cell, cell, classes)
        if pair.encoding.kind == "binary" and 0 < raw_max < BINARY_MIN_MAX:
            raise InputError(
                f"mask {pair.mask.info.path} looks like a 0/1 mask (largest value {raw_max}) but mask_encoding is "
                "binary (0/255); use mask_encoding: ids"
            )
        cell_counts.append(counts)
    class_counts = sum((c.sum(axis=(0, 1)) for c in cell_counts), np.zeros(classes, dtype=np.int64))
    if n_valid == 0:
        raise InputError("the training images have no valid pixels (all nodata)")
    if class_counts.sum() == 0:
        raise InputError("the training masks have no labelled pixels (all ignored or nodata)")
    mean = total / n_valid
    std = np.sqrt(np.maximum(total_sq / n_valid - mean**2, 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)  # a constant band: keep its offset only
    normalization = Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    return Survey(normalization, class_counts, cell, cell_counts)


def _count_cells(labels: np.ndarray, counts: np.ndarray, cy0: int, cx0: int, cell: int, classes: int) -> None:
    """Add the labelled pixels of a block whose top-left cell is (cy0, cx0) to ``counts`` (cells_y, cells_x, k)."""
    h, w = labels.shape
    cy = np.broadcast_to(np.arange(h)[:, None] // cell + cy0, labels.shape)
    cx = np.broadcast_to(np.arange(w)[None, :] // cell + cx0, labels.shape)
    keep = labels != IGNORE
    flat = (cy[keep] * counts.shape[1] + cx[keep]) * classes + labels[keep]
    counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)


class TileSampler:
    """Random tile origins: uniform over the labelled area, or, for a fraction ``oversample`` of tiles, centred
    on a class drawn uniformly among the classes present (so rare classes are seen as often as common ones)."""

    def __init__(self, pairs: Sequence[Pair], found: Survey, tile: int, oversample: float) -> None:
        self.pairs = pairs
        self.tile = tile
        self.cell = found.cell
        self.oversample = oversample
        labelled = np.array([c.sum() for c in found.cell_counts], dtype=np.float64)
        self.pair_weights = labelled / labelled.sum()
        self.present = np.flatnonzero(found.class_counts > 0)
        # per class: the flat (pair, cy, cx) index of every cell holding it, with its pixel count as weight
        self._cells: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        offsets = np.cumsum([0] + [c.shape[0] * c.shape[1] for c in found.cell_counts])
        self._offsets = offsets
        self._shapes = [c.shape[:2] for c in found.cell_counts]
        for k in self.present:
            flat = np.concatenate([c[..., k].reshape(-1) for c in found.cell_counts]).astype(np.float64)
            where = np.flatnonzero(flat)
            self._cells[int(k)] = (where, flat[where] / flat[where].sum())

    def sample(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """(pair index, row, col) of a tile's top-left corner (0 along an axis shorter than the tile, which
        ``read_tile`` pads)."""
        if self.oversample > 0 and rng.random() < self.oversample:
            k = int(rng.choice(self.present))
            where, weights = self._cells[k]
            flat = int(where[rng.choice(len(where), p=weights)])
            index = int(np.searchsorted(self._offsets, flat, side="right") - 1)
            cy, cx = divmod(flat - int(self._offsets[index]), int(self._shapes[index][1]))
            pair = self.pairs[index]
            row = self._around(cy * self.cell, pair.height, rng)
            col = self._around(cx * self.cell, pair.width, rng)
            return index, row, col
        index = int(rng.choice(len(self.pairs), p=self.pair_weights))
        pair = self.pairs[index]
        return index, self._uniform(pair.height, rng), self._uniform(pair.width, rng)

    def _uniform(self, length: int, rng: np.random.Generator) -> int:
        return int(rng.integers(0, length - self.tile + 1)) if length > self.tile else 0

    def _around(self, start: int, length: int, rng: np.random.Generator) -> int:
        """An origin whose tile covers the cell at ``start`` (as far as the raster allows)."""
        if length <= self.tile:
            return 0
        slack = max(self.tile - self.cell, 0)
        origin = start - int(rng.integers(0, slack + 1))
        return int(np.clip(origin, 0, length - self.tile))


def read_tile(
    pair: Pair, row: int, col: int, tile: int, normalization: Normalization
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A normalised ``tile``² window at (row, col) (float32), its labels and its separation weights (None
    without a weight map); parts outside the raster are 0 in the image and weights and ``IGNORE`` in labels."""
    raw, valid, labels, weights = read_raw_tile(pair, row, col, tile)
    return normalization.apply(raw, valid), labels, weights


def read_raw_tile(
    pair: Pair, row: int, col: int, tile: int, weighted: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """A ``tile``² window at (row, col) as stored, its validity, its labels and weights; parts outside the raster
    are 0 and invalid in the image, ``IGNORE`` in labels and 0 in weights."""
    rows = Span(max(row, 0), min(row + tile, pair.height))
    cols = Span(max(col, 0), min(col + tile, pair.width))
    data, inside_valid, inside_labels, inside_weights = pair.read_raw(rows, cols, weighted)
    image = np.zeros((len(pair.image.bands), tile, tile), dtype=data.dtype)
    valid = np.zeros((tile, tile), dtype=bool)
    labels = np.full((tile, tile), IGNORE, dtype=np.int64)
    ys = slice(rows.start - row, rows.stop - row)
    xs = slice(cols.start - col, cols.stop - col)
    image[:, ys, xs] = data
    valid[ys, xs] = inside_valid
    labels[ys, xs] = inside_labels
    weights = None
    if inside_weights is not None:
        weights = np.zeros((tile, tile), dtype=np.float32)
        weights[ys, xs] = inside_weights
    return image, valid, labels, weights


@dataclass(frozen=True)
class GridTile:
    """A validation tile at (row, col) and the part of it (``own``, tile coordinates) that it scores."""

    pair: int
    row: int
    col: int
    own_rows: slice
    own_cols: slice


def _owned(length: int, tile: int, overlap: int) -> list[tuple[int, slice]]:
    """Origins along an axis and the slice of each tile that is scored: overlaps are split at their middle,
    so every pixel is scored once, by the tile in which it lies farthest from an edge."""
    origins = axis_origins(length, tile, tile - overlap)
    bounds = [0] + [(origins[i - 1] + tile + origins[i]) // 2 for i in range(1, len(origins))] + [length]
    return [(o, slice(bounds[i] - o, min(bounds[i + 1], length) - o)) for i, o in enumerate(origins)]


def grid_tiles(pairs: Sequence[Pair], tile: int, overlap: int) -> Iterator[GridTile]:
    """The fixed validation grid over every pair."""
    for index, pair in enumerate(pairs):
        for row, own_rows in _owned(pair.height, tile, overlap):
            for col, own_cols in _owned(pair.width, tile, overlap):
                yield GridTile(index, row, col, own_rows, own_cols)
