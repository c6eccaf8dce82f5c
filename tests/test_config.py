"""YAML configs: shipped configs load, flags override them, unknown keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import _predict_options, build_parser
from pipeline.config import load_config
from pipeline.options import PredictOptions
from tiling import OptionError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    values = load_config(path, "predict", [*PredictOptions.names(), "model"])
    options = PredictOptions().updated(**values)
    for key, value in values.items():
        if key != "model":
            assert getattr(options, key) == value, key


def test_there_is_a_config_per_use_case() -> None:
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {"satellite_rgb", "multispectral", "slide"} <= names


def test_flags_override_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("predict:\n  tile: 128\n  overlap: 32\n  bands: [3, 2, 1]\n  model: m.safetensors\n")
    args = build_parser().parse_args(["predict", "in.tif", "out.tif", "--config", str(config), "--tile", "64"])
    opts, model = _predict_options(args)
    assert (opts.tile, opts.overlap, opts.bands) == (64, 32, (3, 2, 1))
    assert model == "m.safetensors"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("predict:\n  tilesize: 3\n", "unknown key 'tilesize'"),
        ("predcit:\n  tile: 3\n", "unknown key 'predcit'"),
        ("predict: [1, 2]\n", "must be a mapping"),
        ("predict:\n  tile: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_are_named(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(OptionError, match=message):
        load_config(config, "predict", PredictOptions.names())


def test_bad_values_are_refused() -> None:
    with pytest.raises(OptionError, match="unknown blend"):
        PredictOptions(blend="linear")
    with pytest.raises(OptionError, match="batch_size"):
        PredictOptions(batch_size=0)
