"""Write the sample scene (and its ground truth) as GeoTIFFs, window by window.

python -m sample_data.generate                  # sample_data/generated/scene.tif, truth.tif
python -m sample_data.generate --size 8192 --out /tmp/big
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from .scene import synthesize

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "generated"
#: UTM zone 33N, a plausible home for a 1 m scene.
CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_200_000.0)
PIXEL_M = 1.0


def write_scene(
    image_path: Path,
    truth_path: Path | None,
    height: int,
    width: int,
    seed: int = 0,
    nodata_corner: bool = False,
    block: int = 1024,
) -> None:
    """Write an RGB scene (nodata 0) and optionally its truth, ``block`` rows/cols at a time.

    ``nodata_corner`` blanks a triangle in the top-left corner, as at the edge of a satellite swath.
    """
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "crs": CRS,
        "transform": from_origin(*ORIGIN, PIXEL_M, PIXEL_M),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    truth_ds = None
    with rasterio.open(image_path, "w", count=3, dtype="uint8", nodata=0, **profile) as image_ds:
        image_ds.descriptions = ("red", "green", "blue")
        if truth_path is not None:
            truth_ds = rasterio.open(truth_path, "w", count=1, dtype="uint8", nodata=255, **profile)
        try:
            for row in range(0, height, block):
                for col in range(0, width, block):
                    h, w = min(block, height - row), min(block, width - col)
                    rgb, truth = synthesize(row, col, h, w, seed)
                    rgb = np.maximum(rgb, 1)  # 0 is nodata
                    if nodata_corner:
                        yy, xx = np.mgrid[row : row + h, col : col + w]
                        blank = yy + xx < min(height, width) // 4
                        rgb[:, blank] = 0
                        truth[blank] = 255
                    window = Window(col, row, w, h)
                    image_ds.write(rgb, window=window)
                    if truth_ds is not None:
                        truth_ds.write(truth[np.newaxis], window=window)
        finally:
            if truth_ds is not None:
                truth_ds.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for scene.tif and truth.tif")
    parser.add_argument("--size", type=int, default=1536, help="scene height and width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_scene(args.out / "scene.tif", args.out / "truth.tif", args.size, args.size, args.seed, nodata_corner=True)
    print(f"wrote {args.out / 'scene.tif'} and {args.out / 'truth.tif'} ({args.size} x {args.size})")


if __name__ == "__main__":
    main()
