"""Real rasters from ../shared/data: georeferencing and nodata kept end to end, band selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from pipeline import predict
from pipeline.cli import main

from .conftest import make_checkpoint, shared_file


def test_landsat7_rgb_keeps_crs_transform_and_nodata(tmp_path: Path) -> None:
    source = shared_file("geotiff/RGB.byte.tif")
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", tile=64)
    out = tmp_path / "mask.tif"
    report = predict(source, out, checkpoint, chunk=256, output_kind="labels")
    with rasterio.open(source) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        invalid = src.dataset_mask() == 0
        labels = dst.read(1)
        assert dst.nodata == 255
    assert invalid.any() and (~invalid).any()
    np.testing.assert_array_equal(labels == 255, invalid)
    assert report.tiles_skipped > 0  # the scene's nodata collar holds whole tiles


def test_landsat8_band_selection_through_the_cli(tmp_path: Path, capsys) -> None:
    source = shared_file("landsat8/DERIVED_l8_B1-B7_stack.tif")
    rgb_model = make_checkpoint(tmp_path / "rgb.safetensors", tile=64)
    out = tmp_path / "rgb.tif"
    code = main(["predict", str(source), str(out), "--model", str(rgb_model), "--bands", "4,3,2", "--chunk", "256"])
    assert code == 0, capsys.readouterr().err
    with rasterio.open(source) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform

    # All seven bands into a seven-band model; without --bands a 3-band model is refused.
    seven = make_checkpoint(tmp_path / "seven.safetensors", in_channels=7, tile=64)
    assert main(["predict", str(source), str(tmp_path / "all.tif"), "--model", str(seven)]) == 0
    assert main(["predict", str(source), str(tmp_path / "bad.tif"), "--model", str(rgb_model)]) == 1
    assert "--bands" in capsys.readouterr().err
    assert not (tmp_path / "bad.tif").exists()


def test_cog_and_single_band_inputs(tmp_path: Path) -> None:
    cog = shared_file("geotiff/cogeo.tif")
    shade = shared_file("geotiff/shade.tif")
    rgb = make_checkpoint(tmp_path / "rgb.safetensors", tile=64)
    mono = make_checkpoint(tmp_path / "mono.safetensors", in_channels=1, tile=64)
    for source, model in ((cog, rgb), (shade, mono)):
        out = tmp_path / f"{source.stem}.tif"
        predict(source, out, model, chunk=512)
        with rasterio.open(source) as src, rasterio.open(out) as dst:
            assert dst.crs == src.crs and dst.transform == src.transform
