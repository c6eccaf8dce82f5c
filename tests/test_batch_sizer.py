"""The batch sizer: the fastest batch per tile, timed on real batches, with warm-ups and a margin for memory."""

from __future__ import annotations

from pipeline.batch_sizer import BatchSizer


def calibrate(sizer: BatchSizer, per_tile: dict[int, float], threads: int = 2, drift: float = 0.0) -> list[int]:
    """Feed ``sizer`` batches as the run's worker threads would, each batch taking ``per_tile[size]`` a tile
    (a thread's first batch of a size 10 times that, and the machine's speed changing by ``drift`` per batch);
    returns the sizes it asked for."""
    asked, calls = [], 0
    while sizer.chosen is None:
        calls += 1
        assert calls < 100, "the sizer never decided"
        size = sizer.next_size()
        asked.append(size)
        for thread in range(threads):
            first = sum(1 for s in asked if s == size) == 1
            speed = 1 + drift * calls
            sizer.record(size, size * per_tile[size] * (10 if first else 1) * speed, thread=thread)
    return asked


def test_the_fastest_batch_per_tile_is_chosen() -> None:
    sizer = BatchSizer([1, 2, 4])
    calibrate(sizer, {1: 0.10, 2: 0.07, 4: 0.09})
    assert sizer.chosen == 2


def test_a_larger_batch_must_beat_a_smaller_one_by_the_margin() -> None:
    sizer = BatchSizer([1, 2, 4])
    calibrate(sizer, {1: 0.100, 2: 0.097, 4: 0.094})  # 6 % faster: not worth four times the activations
    assert sizer.chosen == 1


def test_each_threads_first_batch_of_a_size_is_not_timed() -> None:
    sizer = BatchSizer([1, 2])
    asked = calibrate(sizer, {1: 0.10, 2: 0.05})
    # Without the warm-ups, batch 2 (ten times slower on its first batch) would have lost.
    assert sizer.chosen == 2
    assert asked.count(1) == asked.count(2) == 1 + BatchSizer.SAMPLES // 2


def test_candidates_are_timed_side_by_side_so_a_drifting_machine_does_not_pick_one() -> None:
    # Equal per tile, on a machine getting 3 % faster each batch: timed one after the other, batch 2 would look
    # more than 10 % faster than batch 1.
    sizer = BatchSizer([1, 2])
    asked = calibrate(sizer, {1: 0.10, 2: 0.10}, drift=-0.03)
    assert sizer.chosen == 1
    assert asked[2:] == [2, 2, 1, 2]  # after both warm-ups: interleaved


def test_exploration_stops_at_a_clearly_slower_candidate() -> None:
    sizer = BatchSizer([1, 2, 4, 8])
    asked = calibrate(sizer, {1: 0.05, 2: 0.10, 4: 0.01, 8: 0.01})
    assert sizer.chosen == 1 and 4 not in asked


def test_a_single_candidate_needs_no_calibration() -> None:
    sizer = BatchSizer([4])
    assert sizer.chosen == 4 and sizer.next_size() == 4
