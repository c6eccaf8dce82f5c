"""Memory planning: chunk size and chunks in flight follow the budget, never the raster's size."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import budget, prediction
from pipeline.budget import ModelMemory, parse_size, plan_resources
from pipeline.memory_model import ChunkCost
from pipeline.options import PredictOptions
from tiling import OptionError, TileGrid

MIB = 2**20


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GB", 4 * 2**30), ("512MiB", 512 * MIB), ("2g", 2 * 2**30), ("1000000", 1_000_000), (2048, 2048)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_fraction_is_of_available_memory() -> None:
    assert 0 < parse_size("0.5") < parse_size("0.9")


def test_bad_size_is_refused() -> None:
    with pytest.raises(OptionError, match="memory size"):
        parse_size("plenty")


def plan(height: int, width: int, limit_mib: int, **kw: object):
    grid = TileGrid(height, width, 256, 64)
    model = ModelMemory(100 * MIB, 0)
    return plan_resources(grid, ChunkCost(3, 1, 1), model, memory_limit=limit_mib * MIB, baseline=300 * MIB, **kw)


def test_a_generous_budget_gets_the_default_chunk_and_every_core() -> None:
    p = plan(20_000, 20_000, 16_000, workers=2)
    assert p.chunk == 2048 and p.workers == 2
    assert p.estimated_peak <= p.memory_limit


def test_a_tight_budget_gets_smaller_chunks_within_the_limit() -> None:
    p = plan(20_000, 20_000, 650, workers=2)
    assert p.chunk < 2048
    assert p.estimated_peak <= p.memory_limit


def test_chunk_and_memory_do_not_depend_on_the_raster_size() -> None:
    small, large = plan(8_192, 8_192, 2_000, workers=2), plan(200_000, 8_192, 2_000, workers=2)
    assert small.chunk == large.chunk and small.per_chunk == large.per_chunk


def test_an_impossible_budget_is_refused_with_what_it_needs() -> None:
    with pytest.raises(OptionError, match=r"too small.*needs at least"):
        plan(10_000, 10_000, 350)


def test_a_model_bound_run_gets_enough_chunks_to_share_among_workers() -> None:
    # 4096² with 2 workers: 2048-px chunks give 4 chunks of unequal tile counts; 1792 px gives 9.
    balanced, large = plan(4096, 4096, 16_000, workers=2), plan(4096, 4096, 16_000, workers=2, balance=False)
    assert (balanced.chunk, large.chunk) == (1792, 2048)


def test_a_pipeline_bound_run_gets_the_largest_chunk_and_worker_processes_four_chunks_each() -> None:
    from pipeline.model import UNetConfig
    from pipeline.run_plan import plan_memory

    # A 1×1-conv-sized model: the pipeline's work sets the run's speed, so threads get the largest chunk.
    model, grid = UNetConfig(3, 1, base_width=1, depth=1), TileGrid(4096, 4096, 256, 20)
    opts = PredictOptions(memory_limit="16GB", workers=2)
    threads = plan_memory(grid, model, 3, "uint8", "cpu", opts, None)
    assert threads.chunk == 2048
    # A model-bound run on worker processes: every worker gets 4 chunks.
    processes = plan_memory(grid, UNetConfig(3, 1), 3, "uint8", "cpu", opts, None, distributed=True)
    assert processes.estimate.chunks_in_flight == 2
    assert math.ceil(4096 / processes.chunk) ** 2 >= 4 * 2


def test_multiply_adds_per_pixel_count_every_conv_at_its_resolution() -> None:
    from pipeline.model import UNetConfig, macs_per_pixel
    from pipeline.run_plan import MODEL_BOUND_MACS_PER_PIXEL

    # Base width 1, depth 1: 3→1, 1→1 (3×3) at full size; 1→2, 2→2 at a quarter of the pixels; a 2→1 2×2
    # transposed conv at each of those; 2→1, 1→1 (3×3) and the 1→1 head at full size.
    expected = (27 + 9) + (18 + 36) / 4 + 8 / 4 + (18 + 9) + 1
    assert macs_per_pixel(UNetConfig(3, 1, base_width=1, depth=1)) == expected < MODEL_BOUND_MACS_PER_PIXEL
    assert macs_per_pixel(UNetConfig(3, 1, base_width=4, depth=2)) > MODEL_BOUND_MACS_PER_PIXEL


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear", "bilinear-concat"])
def test_multiply_adds_per_pixel_match_a_forward_pass(upsampling: str) -> None:
    """The count from the architecture equals the multiply-adds the convs of a real forward pass perform."""
    import torch
    from torch import nn

    from pipeline.model import UNetConfig, build_model, macs_per_pixel

    config = UNetConfig(2, 3, base_width=3, depth=3, upsampling=upsampling, batch_norm=True)
    model, tile, counted = build_model(config).eval(), 32, []

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        at = inputs[0] if isinstance(module, nn.ConvTranspose2d) else output
        counted.append(module.weight.numel() * at.shape[-2] * at.shape[-1])

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.register_forward_hook(count)
    with torch.inference_mode():
        model(torch.zeros(1, 2, tile, tile))
    assert macs_per_pixel(config) == pytest.approx(sum(counted) / tile**2, rel=1e-12)


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls to glibc's ``malloc_trim`` (recorded, not made)."""
    calls: list[int] = []
    monkeypatch.setattr(budget, "_libc_function", lambda name: calls.append if name == "malloc_trim" else None)
    return calls


def test_the_heap_guard_trims_only_beyond_the_working_set_and_the_ceiling(
    monkeypatch: pytest.MonkeyPatch, trims: list[int]
) -> None:
    held = [500 * MIB]
    monkeypatch.setattr(budget, "process_memory", lambda: held[0])
    guard = budget.HeapGuard(allowance=100 * MIB, ceiling=800 * MIB)
    guard.chunk_written()  # the first written chunk sets the working set
    assert (guard.working_set, trims) == (500 * MIB, [])
    held[0] = 600 * MIB
    guard.chunk_written()
    assert trims == []
    held[0] = 601 * MIB  # the heaps' free memory is past the allowance, and the trim hands none back: all in use
    guard.chunk_written()
    assert (guard.trims, trims, guard.working_set) == (1, [0], 601 * MIB)
    held[0] = 700 * MIB
    guard.chunk_written()
    assert trims == [0]  # within the allowance of what is in use
    guard = budget.HeapGuard(allowance=100 * MIB, ceiling=520 * MIB)
    held[0] = 500 * MIB
    guard.chunk_written()
    held[0] = 521 * MIB  # within the allowance, past the plan's ceiling
    guard.chunk_written()
    assert (guard.trims, trims) == (1, [0, 0])
    guard.chunk_written()
    assert trims == [0, 0, 0]  # past the ceiling: every chunk


def test_a_local_run_trims_through_its_guard_and_once_before_the_assembly(
    monkeypatch: pytest.MonkeyPatch, trims: list[int], checkpoint: Path, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    guards: list[budget.HeapGuard] = []

    class Recorded(budget.HeapGuard):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            guards.append(self)

    monkeypatch.setattr(prediction, "HeapGuard", Recorded)
    report = prediction.predict(image_file((3, 200, 230)), tmp_path / "out.tif", checkpoint, chunk=96)
    assert report.chunks > 1
    [guard] = guards
    assert guard.working_set is not None
    assert guard.ceiling is not None  # the plan's estimated peak
    assert len(trims) == guard.trims + 1


def test_a_chunk_written_without_a_guard_trims_the_heaps(trims: list[int]) -> None:
    from pipeline.graph import Spill, TileStats, _write

    class Output:
        def write(self, *args: object) -> None:
            pass

    spill = Spill(pieces={}, stats=TileStats(run=3))
    assert _write(Output(), (0, 0), (0, 8), (0, 8), np.zeros((1, 8, 8), np.float32), spill, None) == (spill.stats, 1)
    assert trims == [0]  # a cluster worker's graph: after every chunk
