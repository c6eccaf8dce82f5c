"""The memory estimate term by term, and the default plan as a pure function of sizes (no run, no RSS)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.budget import ModelMemory, plan_resources
from pipeline.memory_model import ChunkCost, ChunkShape, ChunkSpeed, MemoryEstimate, encoded_bytes
from pipeline.model import UNetConfig
from pipeline.options import PredictOptions
from pipeline.run_plan import plan_memory
from tiling import TileGrid
from tiling.writers import OutputSpec

MIB = 2**20


def test_a_chunk_holds_its_sums_and_the_larger_of_its_window_and_its_encoded_layers() -> None:
    cost = ChunkCost(bands=3, classes=5, itemsize=1, output_bytes=1)
    assert (cost.window_bytes, cost.sums_bytes, cost.written_bytes) == (3 + 1 + 2, 20, 2)
    # The window (6 B/px over the extent) outweighs the coverage mask and labels (2 B/px over the chunk).
    assert cost.per_chunk((1664, 1664), (1536, 1536)) == 1664 * 1664 * (20 + 6)
    wide = ChunkCost(bands=3, classes=5, itemsize=1, output_bytes=20)  # float32 probabilities of 5 classes
    assert wide.per_chunk((1664, 1664), (1536, 1536)) == 1664 * 1664 * 20 + 1536 * 1536 * 21
    assert cost.overhang_row(8192, 128) == 8192 * 128 * 20


def test_the_extent_is_the_chunk_plus_the_overhang_of_its_last_tile() -> None:
    grid = TileGrid(8192, 8192, 512, 128)  # stride 384
    # 1536 = 4 strides: the last tile a chunk owns starts 384 px before its end and reaches 128 px past it.
    shape = ChunkShape.of(grid, 1536)
    assert (shape.extent, shape.overhang, shape.n_chunks, shape.tiles) == ((1664, 1664), (128, 128), 36, 16)
    # 1024 is no multiple of the stride: the chunk at 1024 owns tiles at 1152, 1536 and 1920 (to 2432).
    assert ChunkShape.of(grid, 1024).extent == (1408, 1408)
    # A chunk as large as the raster has no overhang: the last tile is shifted back inside.
    assert ChunkShape.of(TileGrid(4096, 4096, 512, 128), 4096).overhang == (0, 0)


def test_the_peak_is_the_larger_of_the_running_and_the_assembling_phase() -> None:
    estimate = MemoryEstimate(300, 10, 2, 400, 2, 80, 20, 64, assembly=16)
    assert estimate.running == 300 + 10 + 2 * 400 + 2 * 80 + 20 + 64
    assert estimate.running == sum(count * size for _, count, size in estimate.terms())
    assert estimate.peak == estimate.running
    assembling = MemoryEstimate(300, 10, 1, 1, 1, 1, 1, 64, assembly=5000)
    assert assembling.peak == assembling.assembling == 300 + 10 + 64 + 5000


def test_a_remote_inputs_read_cache_is_held_in_both_phases() -> None:
    """The bytes kept of a remote input (a slide's tile cache) stay until the process ends: a term of the running
    phase, and of the assembly."""
    estimate = MemoryEstimate(300, 10, 2, 400, 2, 80, 20, 64, assembly=16, read_cache=128)
    assert estimate.running == 300 + 10 + 2 * 400 + 2 * 80 + 20 + 64 + 128
    assert estimate.running == sum(count * size for _, count, size in estimate.terms())
    assert ("read cache", 1, 128) in estimate.terms()
    assert "read cache" not in [name for name, _, _ in MemoryEstimate(300, 10, 2, 400, 2, 80, 20, 64, 16).terms()]
    assembling = MemoryEstimate(300, 10, 1, 1, 1, 1, 1, 64, assembly=5000, read_cache=128)
    assert assembling.peak == assembling.assembling == 300 + 10 + 64 + 5000 + 128
    grid = TileGrid(4096, 4096, 512, 128)
    plain = plan_resources(grid, ChunkCost(3, 5, 1), ModelMemory(MIB, MIB), None, 8 * 2**30, 1024, 2, baseline=0)
    remote = plan_resources(
        grid, ChunkCost(3, 5, 1), ModelMemory(MIB, MIB), None, 8 * 2**30, 1024, 2, baseline=0, read_cache=128 * MIB
    )
    assert remote.estimated_peak == plain.estimated_peak + 128 * MIB and remote.estimate.read_cache == 128 * MIB


def test_a_chunk_keeps_full_speed_when_its_halo_and_overhead_are_small_against_its_work() -> None:
    grid = TileGrid(8192, 8192, 512, 128)
    cpu = ChunkSpeed(model_ns=1300.0, max_batch=2)
    assert not cpu.full_speed(ChunkShape.of(grid, 1024))  # a 1408² extent for 1024² of work
    assert cpu.full_speed(ChunkShape.of(grid, 1536))
    # Without model work on the CPU (a GPU runs it) only large chunks keep the halo's share small.
    assert not ChunkSpeed(model_ns=0.0, max_batch=2).full_speed(ChunkShape.of(grid, 4096))
    # A chunk must give a GPU's batches of 64 full batches: 16 tiles do not.
    assert not ChunkSpeed(model_ns=1300.0, max_batch=64).full_speed(ChunkShape.of(grid, 1536))


@pytest.fixture(autouse=True)
def _process_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's own memory is a term of the estimate, measured when a run is planned: fix it here, so the
    plans below do not depend on what the tests before them left in this process."""
    monkeypatch.setattr("pipeline.budget.process_memory", lambda: 300 * MIB)


def target_plan(size: int, memory_limit: str | None = None):
    """The issue's case: RGB uint8, 512² tiles (overlap 128), a 5-class width-16 depth-4 U-Net on 2 CPU
    threads, COG labels, 300 MiB of process before the run."""
    grid = TileGrid(size, size, 512, 128)
    opts = PredictOptions(workers=2, memory_limit=memory_limit or "14GB")
    model = UNetConfig(3, 5, base_width=16, depth=4)
    return plan_memory(grid, model, 3, "uint8", "cpu", opts, None, output=OutputSpec("labels"))


def test_the_default_plan_is_the_smallest_full_speed_chunk_whatever_the_raster_size() -> None:
    plans = [target_plan(size) for size in (4096, 8192, 16384)]
    assert [p.chunk for p in plans] == [1536, 1536, 1536]
    assert all(p.workers == 2 for p in plans)
    # Only the row of overhangs grows with the raster (8192 px × 128 rows more, 20 B each, per doubling).
    first, last = plans[0].estimate, plans[-1].estimate
    assert last.overhangs - first.overhangs == (16384 - 4096) * 128 * 20
    assert last.running - first.running == (16384 - 4096) * 128 * 20 + last.baseline - first.baseline
    assert last.peak / first.peak < 1.15


def test_a_memory_limit_still_holds_with_smaller_chunks_or_fewer_in_flight() -> None:
    default, limited = target_plan(8192), target_plan(8192, "1GB")
    assert default.estimated_peak > 2**30 >= limited.estimated_peak
    assert (limited.chunk, limited.workers) < (default.chunk, default.workers)
    # A limit a few chunks' worth below the default's peak: smaller chunks first, still two in flight.
    between = target_plan(8192, f"{default.estimated_peak - 100 * MIB}B")
    assert between.estimated_peak <= between.memory_limit
    assert (between.chunk, between.workers) < (default.chunk, default.workers)


@pytest.mark.parametrize(
    ("kind", "dtype", "per_pixel"),
    [("labels", "float32", 1), ("probs", "float32", 16), ("both", "float32", 17), ("probs", "uint8", 36)],
)
def test_output_layers_set_the_bytes_a_written_chunk_holds(kind: str, dtype: str, per_pixel: int) -> None:
    assert encoded_bytes(OutputSpec(kind, dtype), classes=4) == per_pixel
    assert encoded_bytes(None, classes=4) == 0  # probabilities read in memory: nothing encoded


def test_an_explicit_chunk_is_kept() -> None:
    grid = TileGrid(8192, 8192, 512, 128)
    plan = plan_resources(grid, ChunkCost(3, 5, 1), ModelMemory(MIB, MIB), ChunkSpeed(1300.0, 2), 8 * 2**30, 4096)
    assert plan.chunk == 4096
    with pytest.raises(Exception, match="too small"):
        plan_resources(grid, ChunkCost(3, 5, 1), ModelMemory(MIB, MIB), None, 100 * MIB, 4096, baseline=0)


def test_info_prints_the_estimate_term_by_term_and_the_output(
    checkpoint: Path, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    from pipeline.info import describe

    text = describe(str(image_file((3, 200, 230))), str(checkpoint), PredictOptions(), str(tmp_path / "out.tif"))
    memory = text.splitlines()[[line.startswith("memory") for line in text.splitlines()].index(True) + 1]
    assert memory.strip().startswith("process ") and "forward passes" in memory and "free heap 128.0 MiB" in memory
    assert f"output      {tmp_path / 'out.tif'} (cog, labels)" in text
