"""Training's autocast (``--amp``): which precision each mode gives on each device, how a CPU's native bf16 is
found, and a bf16 step on a CPU (bf16 convolutions, a float32 loss, float32 weights, no loss scaling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import TrainOptions, UNetConfig, devices, load_checkpoint, train
from pipeline.cli import main
from pipeline.training import forward
from pipeline.training.forward import forward_logits, training_autocast
from pipeline.training.learner import build_learner
from pipeline.training.losses import make_loss
from sample_data.scene import synthesize

from .conftest import write_geotiff

TINY = {"base_width": 4, "depth": 2, "tile": 64, "batch_size": 2, "threads": 2, "plot": False}


@pytest.mark.parametrize(
    ("mode", "device", "native", "expected"),
    [
        ("auto", "cpu", True, torch.bfloat16),
        ("auto", "cpu", False, None),  # emulated bf16 is slower than float32
        ("on", "cpu", False, torch.bfloat16),
        ("on", "cpu", True, torch.bfloat16),
        ("off", "cpu", True, None),
        ("auto", "cuda:0", False, torch.float16),
        ("on", "cuda:1", True, torch.float16),
        ("off", "cuda:0", True, None),
    ],
)
def test_each_amp_mode_gives_its_autocast(mode, device, native, expected, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "native_bf16", lambda: native)
    assert training_autocast(mode, device) is expected


@pytest.mark.parametrize(
    ("capabilities", "native"),
    [
        ({"avx2": True, "avx512_f": True, "avx512_bf16": True}, True),
        ({"avx512_bf16": False, "amx_tile": True, "amx_bf16": True}, True),
        ({"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, False),
        ({"architecture": "aarch64"}, False),
    ],
)
def test_native_bf16_from_torchs_cpu_capabilities(capabilities, native, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    devices.native_bf16.cache_clear()
    try:
        assert devices.native_bf16() is native
    finally:
        devices.native_bf16.cache_clear()


def test_native_bf16_from_proc_cpuinfo_where_torch_cannot_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert "avx512_bf16" in devices._cpuinfo_flags(str(cpuinfo))
    assert devices._cpuinfo_flags(str(tmp_path / "absent")) == set()
    for flags, native in (({"avx2", "amx_bf16"}, True), ({"avx2", "avx512f", "avx512_vnni"}, False)):
        monkeypatch.setattr(devices, "_cpuinfo_flags", lambda flags=flags: flags)
        devices.native_bf16.cache_clear()
        try:
            assert devices.native_bf16() is native
        finally:
            devices.native_bf16.cache_clear()


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_a_cpu_step_under_bf16_autocast(autocast: torch.dtype | None) -> None:
    """The convolutions compute in bf16 under autocast; the logits and the loss are float32, the weights stay
    float32 and change; the grad scaler scales nothing (bf16 has float32's range)."""
    opts = TrainOptions(base_width=4, depth=2, tile=32, lr=0.01, epochs=1, steps_per_epoch=2)
    config = UNetConfig(in_channels=3, classes=1, base_width=4, depth=2)
    learner = build_learner(opts, config, "cpu", autocast)
    dtypes: list[torch.dtype] = []
    first_conv = next(m for m in learner.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    labels = (torch.rand(2, 32, 32, generator=generator) > 0.5).long()
    loss = make_loss("bce+dice", True, None)
    logits = forward_logits(learner.model, images, autocast)
    assert logits.dtype == torch.float32 and dtypes == [autocast or torch.float32]
    assert loss(logits, labels, None).dtype == torch.float32
    before = [p.detach().clone() for p in learner.model.parameters()]
    value = learner.step(images, labels, loss)
    assert np.isfinite(value) and not learner.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.model.parameters(), strict=True))


def test_the_run_records_its_precision(tmp_path: Path, capsys) -> None:
    rgb, truth = synthesize(0, 0, 96, 96, seed=4)
    image = write_geotiff(tmp_path / "scene.tif", np.maximum(rgb, 1))
    mask = write_geotiff(tmp_path / "truth.tif", truth[np.newaxis])
    common = ["--images", image, "--masks", mask, "--epochs", "1", "--steps-per-epoch", "2", "--base-width", "4"]
    common += ["--depth", "2", "--tile", "64", "--batch-size", "2", "--threads", "2", "--no-plot"]
    for amp, precision in (("on", "bf16"), ("off", "fp32")):
        out = tmp_path / f"{amp}.safetensors"
        assert main([str(a) for a in ["train", *common, "--out", out, "--amp", amp]]) == 0
        err = capsys.readouterr().err
        assert ("under bf16 autocast" in err) is (amp == "on"), err
        assert load_checkpoint(out).card.info["training_precision"] == precision
    report = train(images=[str(image)], masks=[str(mask)], out=str(tmp_path / "auto.safetensors"), epochs=1,
                   steps_per_epoch=1, amp="auto", **TINY)  # fmt: skip
    assert report.precision == ("bf16" if devices.native_bf16() else "fp32")


def test_an_unquoted_yaml_on_or_off_is_the_mode() -> None:
    assert TrainOptions(amp=False).amp == "off" and TrainOptions(amp=True).amp == "on"  # type: ignore[arg-type]
