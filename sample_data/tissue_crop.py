"""The demo's real tissue: a 512 × 512 crop of the CC0 slide CMU-1-Small-Region (OpenSlide test data).

    python -m sample_data.tissue_crop        # rewrites sample_data/tissue_crop.tif from ../shared/data

The crop (rows 760–1272, cols 880–1392 of the slide's full resolution: epidermis and dermis, a few hundred
nuclei) is written as a JPEG-compressed TIFF with the slide's pixel size (0.499 µm/px) in its resolution tags,
so tilewise reads it as a slide that states its pixel size. Its licence is in tissue_crop.LICENSE.txt.
"""

from __future__ import annotations

from pathlib import Path

import tifffile

HERE = Path(__file__).resolve().parent
CROP = HERE / "tissue_crop.tif"
SOURCE = HERE.parents[1] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
ROWS, COLS = slice(760, 1272), slice(880, 1392)
MPP = 0.499


def write_crop(source: Path = SOURCE, dest: Path = CROP) -> Path:
    image = tifffile.imread(source)[ROWS, COLS]
    per_cm = 1e4 / MPP
    tifffile.imwrite(
        dest,
        image,
        photometric="rgb",
        tile=(256, 256),
        compression="jpeg",
        compressionargs={"level": 90},
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    return dest


if __name__ == "__main__":
    print(write_crop())
