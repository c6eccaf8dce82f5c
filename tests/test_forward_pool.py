"""The CPU forward pool: every caller gets its tiles back in order, each tile runs once, errors reach the caller,
and the threads share whatever requests are waiting (no thread idles while another has tiles left)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from pipeline.forward_pool import ForwardPool, TileRequest
from pipeline.runner import ModelRunner, ModelSpec, _stacked
from tiling.normalize import Normalization

NORM = Normalization((0.0,), (1.0,))


def _request(origins: list[tuple[int, int]]) -> TileRequest:
    return TileRequest(np.zeros((1, 8, 8), np.uint8), None, origins, 4, NORM)


class Recorder:
    """A stand-in forward pass: marks each tile with its origin, sleeps a little and records who ran what."""

    def __init__(self, fail_at: tuple[int, int] | None = None, seconds: float = 0.002) -> None:
        self.fail_at, self.seconds = fail_at, seconds
        self.calls: list[tuple[int, int, list[tuple[int, int]]]] = []  # (request id, thread, origins)
        self.lock = threading.Lock()

    def __call__(self, request: TileRequest, origins: list[tuple[int, int]]) -> np.ndarray:
        with self.lock:
            self.calls.append((id(request), threading.get_ident(), origins))
        time.sleep(self.seconds * random.random())
        if self.fail_at in origins:
            raise ValueError(f"bad tile {self.fail_at}")
        return np.array([[[[y * 1000 + x]]] for y, x in origins], np.float32)


def _wait_until(condition) -> None:
    """Wait for another thread to reach a state (the deadline only keeps a broken test from hanging)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "the state was never reached"
        time.sleep(0.001)


def _collect(pool: ForwardPool, request: TileRequest, threads: int, out: dict, key: str) -> None:
    out[key] = [(origins, probs) for origins, probs in pool.run(request, threads)]


@pytest.mark.parametrize("batch", [1, 3])
def test_concurrent_callers_get_their_own_tiles_back_in_order_and_each_tile_runs_once(batch: int) -> None:
    recorder = Recorder()
    pool = ForwardPool(lambda: batch, recorder)
    requests = {f"r{k}": _request([(k, x) for x in range(20 + k)]) for k in range(4)}
    results: dict = {}
    callers = [threading.Thread(target=_collect, args=(pool, r, 2, results, k)) for k, r in requests.items()]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=30)

    for key, request in requests.items():
        origins = [o for batch_origins, _ in results[key] for o in batch_origins]
        assert origins == list(request.origins)
        values = np.concatenate([probs.ravel() for _, probs in results[key]])
        assert values.tolist() == [y * 1000 + x for y, x in request.origins]
    ran = [o for _, _, origins in recorder.calls for o in origins]
    assert sorted(ran) == sorted(o for r in requests.values() for o in r.origins)


def test_a_lone_request_is_shared_by_every_pool_thread() -> None:
    recorder = Recorder(seconds=0.02)
    pool = ForwardPool(lambda: 1, recorder)
    list(pool.run(_request([(0, x) for x in range(12)]), threads=2))
    assert len({thread for _, thread, _ in recorder.calls}) == 2


@pytest.mark.parametrize(("priorities", "expected"), [((0, 0), "aaaaabbbbb"), ((1, 0), "abbbbbaaaa")])
def test_the_most_urgent_request_is_served_first_then_the_oldest(priorities: tuple[int, int], expected: str) -> None:
    gate = threading.Event()
    recorder = Recorder(seconds=0.0)

    def run_batch(request: TileRequest, origins: list[tuple[int, int]]) -> np.ndarray:
        gate.wait()  # the thread holds its first batch (of "a") until both requests wait
        return recorder(request, origins)

    pool = ForwardPool(lambda: 2, run_batch)
    requests = {
        name: TileRequest(np.zeros((1, 8, 8), np.uint8), None, [(k, x) for x in range(10)], 4, NORM, priority)
        for k, (name, priority) in enumerate(zip("ab", priorities, strict=True))
    }
    results: dict = {}
    callers = [threading.Thread(target=_collect, args=(pool, r, 1, results, k)) for k, r in requests.items()]
    callers[0].start()
    _wait_until(lambda: requests["a"].taken > 0)  # a thread holds "a"'s first batch
    callers[1].start()
    _wait_until(lambda: requests["b"] in pool._requests)
    gate.set()
    for caller in callers:
        caller.join(timeout=30)
    names = {id(r): name for name, r in requests.items()}
    assert "".join(names[request] for request, _, _ in recorder.calls) == expected
    assert [o for origins, _ in results["a"] for o in origins] == list(requests["a"].origins)


def test_an_error_reaches_its_caller_and_drops_the_rest_of_its_tiles() -> None:
    recorder = Recorder(fail_at=(0, 2), seconds=0.01)
    pool = ForwardPool(lambda: 1, recorder)
    with pytest.raises(ValueError, match=r"bad tile \(0, 2\)"):
        list(pool.run(_request([(0, x) for x in range(40)]), threads=1))
    ran = [o for _, _, origins in recorder.calls for o in origins]
    assert len(ran) < 40  # the failed request's later tiles were not run
    # The pool goes on serving other requests.
    assert [o for origins, _ in pool.run(_request([(5, 5)]), threads=1) for o in origins] == [(5, 5)]


def test_a_stopped_pool_serves_the_next_run_and_stops_again() -> None:
    """Each stop ends the threads of the run before it (a failed run, retried in the same process, fails again)."""
    pool = ForwardPool(lambda: 1, Recorder())
    for attempt in range(3):
        assert len(list(pool.run(_request([(attempt, x) for x in range(4)]), threads=2))) == 4
        threads = list(pool._threads)
        assert threads and all(thread.is_alive() for thread in threads)  # parked, waiting for work
        stopper = threading.Thread(target=pool.stop, daemon=True)
        stopper.start()
        stopper.join(timeout=30)
        assert not stopper.is_alive(), f"stop {attempt + 1} never returned: its threads did not end"
        assert not any(thread.is_alive() for thread in threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_after_a_run_runs_its_own_tiles() -> None:
    """A forked child (multiprocessing's default start on Linux) inherits the pool but none of its threads."""
    pool = ForwardPool(lambda: 1, Recorder())
    assert len(list(pool.run(_request([(0, x) for x in range(4)]), threads=2))) == 4  # threads now parked
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its run returns every tile; SIGALRM ends it if it hangs
        signal.alarm(60)
        try:
            ran = [o for origins, _ in pool.run(_request([(1, x) for x in range(6)]), threads=2) for o in origins]
            os._exit(0 if ran == [(1, x) for x in range(6)] else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child's run hung or lost tiles"
    assert len(list(pool.run(_request([(2, 0)]), threads=2))) == 1  # the parent's pool still works


def test_a_closed_pool_lets_its_threads_end_and_refuses_more_work() -> None:
    pool = ForwardPool(lambda: 1, Recorder())
    assert len(list(pool.run(_request([(0, x) for x in range(4)]), threads=2))) == 4
    threads = list(pool._threads)
    pool.close()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    with pytest.raises(RuntimeError, match="closed"):
        list(pool.run(_request([(0, 0)]), threads=1))


def test_the_runner_counts_the_cpu_seconds_of_its_forward_passes(checkpoint) -> None:
    runner = ModelRunner(ModelSpec.for_checkpoint(checkpoint))
    image = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    origins = [(y, x) for y in (0, 64) for x in (0, 64)]
    cpu_before = time.process_time()
    with runner.queued(image, None, origins, 64, runner.card.normalization) as results:
        assert sum(len(batch) for batch, _ in results) == 4
    spent = time.process_time() - cpu_before  # every thread of the process
    runner.close()
    assert runner.tiles_run == 4
    assert 0 < runner.forward_cpu_seconds <= spent


def test_a_batch_of_one_tile_is_a_view_unless_the_image_is_read_only() -> None:
    image = np.arange(3 * 10 * 12, dtype=np.float32).reshape(3, 10, 12)
    one = _stacked(image, [(2, 5)], 4)
    assert one.shape == (1, 3, 4, 4) and np.shares_memory(one, image)
    np.testing.assert_array_equal(one[0], image[:, 2:6, 5:9])
    two = _stacked(image, [(2, 5), (6, 0)], 4)
    np.testing.assert_array_equal(two, np.stack([image[:, 2:6, 5:9], image[:, 6:10, 0:4]]))
    image.flags.writeable = False
    assert not np.shares_memory(_stacked(image, [(2, 5)], 4), image)


def test_running_float_tiles_leaves_the_caller_s_image_untouched(checkpoint) -> None:
    runner = ModelRunner(ModelSpec.for_checkpoint(checkpoint, batch_size=1))
    image = np.random.default_rng(1).normal(100, 20, (3, 96, 96)).astype(np.float32)
    valid = np.ones((96, 96), bool)
    valid[:10] = False
    before = image.copy()
    with runner.queued(image, valid, [(0, 0), (32, 32)], 64, runner.card.normalization) as results:
        assert sum(len(batch) for batch, _ in results) == 2
    runner.close()
    np.testing.assert_array_equal(image, before)


def test_pool_threads_take_their_share_of_cores_in_every_run(checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool thread's OpenMP team keeps the size it had on the thread's first torch call: a thread that served a
    run of one forward pass (all cores) must shrink to its share when a later run has two side by side."""
    import torch

    from pipeline import devices
    from pipeline import runner as runner_module

    monkeypatch.setattr(runner_module, "available_cores", lambda: 4)
    monkeypatch.setattr(devices, "available_cores", lambda: 4)
    runner = ModelRunner(ModelSpec.for_checkpoint(checkpoint, batch_size=1))
    seen: list[int] = []
    original = runner.probabilities

    def probabilities(*args: object) -> np.ndarray:
        seen.append(torch.get_num_threads())
        return original(*args)

    monkeypatch.setattr(runner, "probabilities", probabilities)
    image = np.zeros((3, 64, 64), np.uint8)
    previous = torch.get_num_threads()
    try:
        for workers in (1, 2):
            with devices.cpu_threads(workers), runner.queued(image, None, [(0, 0)], 64, runner.card.normalization) as r:
                assert len(list(r)) == 1
    finally:
        runner.close()
        torch.set_num_threads(previous)
    assert seen == [4, 2]
