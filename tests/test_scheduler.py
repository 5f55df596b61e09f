"""The batching scheduler against a fake model that records its batches (no HTTP, no diffusion)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from decoder_service.scheduler import BatchScheduler, SchedulerConfig
from services.serving.errors import (
    DeadlineExceededError,
    DrainingError,
    QueueFullError,
    RequestCancelledError,
    RequestTooCostlyError,
)


class FakeModel:
    """Returns ``job * 10`` for each job; records batches and the thread they ran on; can be held or fail."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, jobs: list[int]) -> list[int]:
        self.started.set()
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(jobs))
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in jobs:
            raise RuntimeError("model exploded")
        return [job * 10 for job in jobs]


class Recorder:
    def __init__(self) -> None:
        self.rejections: list[str] = []
        self.batch_sizes: list[int] = []
        self.waits: list[float] = []

    def queue_size(self, n_jobs: int) -> None:
        assert n_jobs >= 0

    def queue_load(self, cost: float, estimated_wait_s: float, in_flight: int) -> None:
        assert cost >= 0 and estimated_wait_s >= 0 and in_flight >= 0

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def batch_done(self, n_jobs: int, seconds: float, ok: bool) -> None:
        self.batch_sizes.append(n_jobs)

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def make(model, **config) -> tuple[BatchScheduler, Recorder]:
    recorder = Recorder()
    return BatchScheduler(model, SchedulerConfig(**config), observer=recorder), recorder


def test_full_bucket_runs_at_once_and_results_come_back_in_order():
    model = FakeModel()

    async def main():
        scheduler, recorder = make(model, max_batch_size=4, max_queue_delay_s=5.0)
        await scheduler.start()
        started = time.monotonic()
        results = await asyncio.gather(*(scheduler.run("a", [i]) for i in range(4)))
        elapsed = time.monotonic() - started
        await scheduler.close()
        return results, elapsed, recorder

    results, elapsed, recorder = run(main())
    assert results == [[0], [10], [20], [30]]
    assert model.batches == [[0, 1, 2, 3]]
    assert elapsed < 2.0  # did not wait for the 5 s delay: the bucket was full
    assert recorder.batch_sizes == [4]
    assert len(model.threads) == 1 and next(iter(model.threads)).startswith("batch-worker")


def test_partial_bucket_runs_after_max_queue_delay():
    model = FakeModel()

    async def main():
        scheduler, _ = make(model, max_batch_size=8, max_queue_delay_s=0.05)
        await scheduler.start()
        started = time.monotonic()
        results = await asyncio.gather(scheduler.run("a", [1]), scheduler.run("a", [2]))
        elapsed = time.monotonic() - started
        await scheduler.close()
        return results, elapsed

    results, elapsed = run(main())
    assert results == [[10], [20]]
    assert model.batches == [[1, 2]]
    assert 0.04 <= elapsed < 2.0


def test_incompatible_requests_never_share_a_batch():
    model = FakeModel()

    async def main():
        scheduler, _ = make(model, max_batch_size=8, max_queue_delay_s=0.02)
        await scheduler.start()
        keys = ["a", "b", "a", "c", "b", "a"]
        results = await asyncio.gather(*(scheduler.run(k, [i]) for i, k in enumerate(keys)))
        await scheduler.close()
        return keys, results

    keys, results = run(main())
    assert results == [[i * 10] for i in range(6)]
    for batch in model.batches:
        assert len({keys[job] for job in batch}) == 1
    assert sorted(len(b) for b in model.batches) == [1, 2, 3]


def test_no_bucket_starves_while_another_keeps_filling():
    """A hot bucket refilled faster than it drains must not block a lone request in another bucket."""
    model = FakeModel(delay_s=0.01)

    async def main():
        scheduler, _ = make(model, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=1000)
        await scheduler.start()
        hot = [asyncio.ensure_future(scheduler.run("hot", [i])) for i in range(2)]
        await asyncio.sleep(0.005)
        lonely = asyncio.ensure_future(scheduler.run("cold", [999]))
        for i in range(2, 40):  # keep the hot bucket full
            hot.append(asyncio.ensure_future(scheduler.run("hot", [i])))
        await lonely
        done_hot_before = sum(1 for h in hot if h.done())
        await asyncio.gather(*hot)
        await scheduler.close()
        return done_hot_before

    done_hot_before = run(main())
    position = next(i for i, batch in enumerate(model.batches) if 999 in batch)
    assert position <= 2  # served right after the batch(es) queued before it
    assert done_hot_before < 40


def test_group_is_never_split_and_a_large_group_runs_alone():
    model = FakeModel()

    async def main():
        scheduler, _ = make(model, max_batch_size=4, max_queue_delay_s=0.02)
        await scheduler.start()
        results = await asyncio.gather(
            scheduler.run("a", [1, 2, 3]), scheduler.run("a", [4, 5]), scheduler.run("a", [6, 7, 8, 9, 10, 11]))
        await scheduler.close()
        return results

    results = run(main())
    assert results == [[10, 20, 30], [40, 50], [60, 70, 80, 90, 100, 110]]
    assert model.batches == [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]


def test_queue_full_raises_with_retry_after():
    model = FakeModel()
    model.gate.clear()

    async def main():
        scheduler, recorder = make(model, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2, retry_after_s=3)
        await scheduler.start()
        running = asyncio.ensure_future(scheduler.run("a", [0]))
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        queued = [asyncio.ensure_future(scheduler.run("a", [i])) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as info:
            scheduler.submit("a", [3])
        model.gate.set()
        results = await asyncio.gather(running, *queued)
        await scheduler.close()
        return info.value, results, recorder

    error, results, recorder = run(main())
    assert error.retry_after_s == 3 and "full" in str(error)
    assert model.batches == [[0], [1], [2]]
    assert results == [[0], [10], [20]]
    assert recorder.rejections == ["queue_full"]


def test_deadline_expires_while_queued_but_not_once_running():
    model = FakeModel()
    model.gate.clear()

    async def main():
        scheduler, recorder = make(model, max_batch_size=1, max_queue_delay_s=0.0)
        await scheduler.start()
        running = asyncio.ensure_future(scheduler.run("a", [0], timeout_s=0.05))
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        queued = asyncio.ensure_future(scheduler.run("a", [1], timeout_s=0.05))
        await asyncio.sleep(0.2)
        expired_while_blocked = queued.done()
        model.gate.set()
        result = await running  # started before its deadline: it finishes
        with pytest.raises(DeadlineExceededError):
            await queued
        await scheduler.close()
        return expired_while_blocked, result, recorder

    expired_while_blocked, result, recorder = run(main())
    assert expired_while_blocked  # the 504 does not wait for the worker
    assert result == [0]
    assert model.batches == [[0]]
    assert recorder.rejections == ["deadline"]


def test_cancelled_requests_are_dropped_before_their_batch():
    model = FakeModel()
    model.gate.clear()

    async def main():
        scheduler, recorder = make(model, max_batch_size=4, max_queue_delay_s=0.0)
        await scheduler.start()
        first = asyncio.ensure_future(scheduler.run("a", [0]))
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        keep = scheduler.submit("a", [1])
        drop = scheduler.submit("a", [2])
        waiter = asyncio.ensure_future(scheduler.run("a", [3]))
        await asyncio.sleep(0)
        assert drop.cancel() is True
        waiter.cancel()  # the awaiting coroutine went away (e.g. handler cancelled)
        model.gate.set()
        await first
        kept = await keep.future
        with pytest.raises(RequestCancelledError):
            await drop.future
        await scheduler.drain(5)
        await scheduler.close()
        return kept, recorder

    kept, recorder = run(main())
    assert kept == [10]
    assert model.batches == [[0], [1]]
    assert recorder.rejections.count("cancelled") == 2


def test_a_failing_batch_fails_exactly_its_requests():
    model = FakeModel(fail_on=13)

    async def main():
        scheduler, _ = make(model, max_batch_size=2, max_queue_delay_s=0.02)
        await scheduler.start()
        outcomes = await asyncio.gather(
            scheduler.run("a", [12]), scheduler.run("a", [13]), scheduler.run("b", [14]),
            return_exceptions=True)
        after = await scheduler.run("a", [15])  # the worker survives
        await scheduler.close()
        return outcomes, after

    outcomes, after = run(main())
    assert isinstance(outcomes[0], RuntimeError) and isinstance(outcomes[1], RuntimeError)
    assert outcomes[2] == [140]
    assert after == [150]


def test_wrong_result_count_is_an_error_not_a_hang():
    async def main():
        scheduler = BatchScheduler(lambda jobs: jobs[:-1], SchedulerConfig(max_batch_size=2, max_queue_delay_s=0.01))
        await scheduler.start()
        outcomes = await asyncio.gather(scheduler.run("a", [1]), scheduler.run("a", [2]), return_exceptions=True)
        await scheduler.close()
        return outcomes

    outcomes = run(main())
    assert all(isinstance(o, RuntimeError) and "results" in str(o) for o in outcomes)


def test_drain_finishes_everything_accepted_and_refuses_new_work():
    model = FakeModel(delay_s=0.01)

    async def main():
        scheduler, recorder = make(model, max_batch_size=4, max_queue_delay_s=10.0)
        await scheduler.start()
        accepted = [asyncio.ensure_future(scheduler.run("a", [i])) for i in range(6)]
        await asyncio.sleep(0)
        drained = await scheduler.drain(5)
        with pytest.raises(DrainingError):
            scheduler.submit("a", [99])
        results = await asyncio.gather(*accepted)
        await scheduler.close()
        return drained, results, recorder

    drained, results, recorder = run(main())
    assert drained is True
    assert results == [[i * 10] for i in range(6)]  # flushed without waiting for the 10 s delay
    assert "draining" in recorder.rejections


def test_many_sequential_requests_each_get_their_own_result():
    async def main():
        scheduler = BatchScheduler(lambda jobs: jobs, SchedulerConfig(max_batch_size=1, max_queue_delay_s=0.0))
        await scheduler.start()
        for i in range(200):
            assert await scheduler.run("a", [i]) == [i]
        await scheduler.close()

    run(main())


def test_a_group_larger_than_the_queue_is_admitted_only_into_an_empty_queue():
    model = FakeModel()
    model.gate.clear()

    async def main():
        scheduler, _ = make(model, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=2)
        await scheduler.start()
        big = scheduler.submit("a", [1, 2, 3, 4])  # empty queue: admitted
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        small = scheduler.submit("a", [5])
        with pytest.raises(QueueFullError):
            scheduler.submit("a", [6, 7, 8])
        model.gate.set()
        results = await big.future, await small.future
        await scheduler.close()
        return results

    assert run(main()) == ([10, 20, 30, 40], [50])


# -- work-based admission ---------------------------------------------------------------------


def make_costed(model, **config) -> tuple[BatchScheduler, Recorder]:
    """Jobs are their own cost (an int job of value 3 costs 3 units)."""
    recorder = Recorder()
    return BatchScheduler(model, SchedulerConfig(**config), observer=recorder, cost_of=float), recorder


def test_queue_cost_caps_admission_and_retry_after_comes_from_the_measured_throughput():
    model = FakeModel()
    model.gate.clear()

    async def main():
        scheduler, recorder = make_costed(model, max_batch_size=1, max_queue_delay_s=0.0, max_queue_cost=10)
        await scheduler.start()
        scheduler.throughput.observe("a", cost=1.0, seconds=2.0)  # 2 s per unit
        running = scheduler.submit("a", [4])
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        queued = scheduler.submit("a", [6])
        with pytest.raises(QueueFullError) as refused:
            scheduler.submit("a", [5])  # 6 + 5 > 10 units
        model.gate.set()
        results = await running.future, await queued.future
        await scheduler.close()
        return refused.value, results, recorder

    refused, results, recorder = run(main())
    assert results == ([40], [60])
    assert refused.retry_after_s == pytest.approx(2.0)  # 1 unit over the cap at 2 s per unit
    assert recorder.rejections == ["queue_full"]


def test_a_request_whose_estimated_wait_exceeds_its_deadline_is_refused_at_once():
    model = FakeModel()
    model.gate.clear()

    async def main():
        scheduler, recorder = make_costed(model, max_batch_size=1, max_queue_delay_s=0.0, admission_headroom=0.9)
        await scheduler.start()
        scheduler.throughput.observe("a", cost=1.0, seconds=1.0)  # 1 s per unit
        running = scheduler.submit("a", [1])
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        scheduler.submit("a", [3], timeout_s=30)  # about 1 + 3 s of work ahead of the next request
        wait = scheduler.estimated_wait()
        with pytest.raises(QueueFullError) as refused:
            scheduler.submit("a", [1], timeout_s=2.0)
        admitted = scheduler.submit("a", [1], timeout_s=30)
        model.gate.set()
        await running.future
        await admitted.future
        await scheduler.close()
        return wait, refused.value, recorder

    wait, refused, recorder = run(main())
    assert 3.0 < wait <= 4.0
    assert "estimated wait" in str(refused)
    assert refused.retry_after_s == pytest.approx(wait - 0.9 * 2.0, abs=0.2)
    assert recorder.rejections == ["overloaded"]


def test_a_request_over_the_cost_ceiling_is_refused_outright():
    async def main():
        scheduler, recorder = make_costed(FakeModel(), max_request_cost=5)
        await scheduler.start()
        with pytest.raises(RequestTooCostlyError):
            scheduler.submit("a", [3, 3])
        result = await scheduler.run("a", [2, 3])
        await scheduler.close()
        return result, recorder

    result, recorder = run(main())
    assert result == [20, 30] and recorder.rejections == ["too_costly"]


def test_before_any_batch_was_measured_only_one_batch_is_queued():
    model = FakeModel()
    model.gate.clear()

    async def main():
        scheduler, _ = make(model, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=64, cold_start_jobs=2)
        await scheduler.start()
        first = scheduler.submit("a", [1])
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        queued = [scheduler.submit("a", [i]) for i in (2, 3)]
        with pytest.raises(QueueFullError):
            scheduler.submit("a", [4])
        model.gate.set()
        await first.future
        for ticket in queued:
            await ticket.future
        more = [scheduler.submit("a", [i]) for i in range(5, 10)]  # measured now: room by estimate
        results = [await t.future for t in more]
        await scheduler.close()
        return results

    assert run(main()) == [[50], [60], [70], [80], [90]]


class StoppableModel:
    """Ten 50 ms "steps", asking ``should_stop`` after each like the real pipeline callback."""

    def __init__(self) -> None:
        self.scheduler: BatchScheduler | None = None
        self.steps = 0
        self.started = threading.Event()

    def __call__(self, jobs):
        from services.errors import DecodeInterruptedError

        self.started.set()
        for _ in range(10):
            time.sleep(0.05)
            self.steps += 1
            if self.scheduler.should_stop():
                raise DecodeInterruptedError("stopped")
        return jobs


def test_a_running_batch_stops_when_every_client_in_it_left():
    model = StoppableModel()

    async def main():
        scheduler, _ = make(model, max_batch_size=2, max_queue_delay_s=0.0)
        model.scheduler = scheduler
        await scheduler.start()
        ticket = scheduler.submit("a", [1])
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        assert not ticket.cancel()  # running: not dropped, marked abandoned
        with pytest.raises(RequestCancelledError):
            await ticket.future
        await scheduler.close()

    run(main())
    assert model.steps < 10


def test_stop_running_fails_the_batch_with_the_given_error_and_stalls_are_measured():
    model = StoppableModel()
    clock = {"now": 0.0}

    async def main():
        scheduler = BatchScheduler(model, SchedulerConfig(max_queue_delay_s=0.0), clock=lambda: clock["now"])
        model.scheduler = scheduler
        await scheduler.start()
        idle_stall = scheduler.stalled_for()
        ticket = scheduler.submit("a", [1])
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        clock["now"] += 100.0  # no heartbeat for 100 s of the scheduler's clock
        stall = scheduler.stalled_for()
        scheduler.stop_running(DrainingError("drain timeout", retry_after_s=5))
        with pytest.raises(DrainingError):
            await ticket.future
        await scheduler.close()
        return idle_stall, stall

    idle_stall, stall = run(main())
    assert idle_stall == 0.0 and stall >= 99.0
