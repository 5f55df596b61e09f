"""Dynamic batching scheduler: pure asyncio, no HTTP, no model.

Requests are *groups* of jobs (one job for ``/decode``, N for ``/candidates``)
put into buckets by an exact compatibility key (profile, mode, working size,
steps, guidance). A bucket is due when its queued jobs fill ``max_batch_size``
or its oldest request has waited ``max_queue_delay_s``; among due buckets the
one with the oldest head runs first, so no bucket starves. A group is never
split across batches (a group larger than ``max_batch_size`` runs alone).

One worker thread (a single-thread executor) runs ``run_batch`` off the event
loop, one batch at a time. A failing batch fails exactly its requests.
Requests whose deadline passes while queued fail with
``DeadlineExceededError``; cancelled requests are dropped before their batch
starts. ``drain()`` stops accepting and finishes everything accepted.

Admission is by work, not by count. Every job has a cost (``cost_of``; the
decoder uses working pixels x steps x (1 + ControlNet) + output pixels, in
megapixel units) and the scheduler keeps an estimate of the worker's seconds
per cost unit, an EWMA per bucket measured on the batches it runs. A request is
refused at once (``QueueFullError``, 429, with a ``Retry-After`` computed from the
estimate) when the queue's cost or job count is at capacity, or when the
estimated wait before its batch could start exceeds ``admission_headroom`` of
its deadline: work that would time out in the queue is never admitted. Until the
first batch has been measured (a cold start) at most ``cold_start_jobs`` are queued
(the decoder uses one batch). A
request costing more than ``max_request_cost`` is refused outright
(``RequestTooCostlyError``).

A running batch can be stopped between diffusion steps: ``should_stop()`` (which
the model calls at every step, and which doubles as the worker's heartbeat)
turns true when every request of the batch has been abandoned by its client, or
when ``stop_running`` was called (drain timeout). ``stalled_for()`` is the time
since the last heartbeat of a running batch (liveness).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from services.errors import DecodeInterruptedError
from services.serving.errors import (
    DeadlineExceededError,
    DrainingError,
    QueueFullError,
    RequestCancelledError,
    RequestTooCostlyError,
    ServiceError,
)

J = TypeVar("J")
R = TypeVar("R")


class SchedulerObserver(Protocol):
    """What the scheduler reports; ``services.serving.metrics`` implements it."""

    def queue_size(self, n_jobs: int) -> None: ...
    def queue_load(self, cost: float, estimated_wait_s: float, in_flight: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def batch_done(self, n_jobs: int, seconds: float, ok: bool) -> None: ...
    def rejected(self, reason: str) -> None: ...


class _NullObserver:
    def queue_size(self, n_jobs: int) -> None:
        pass

    def queue_load(self, cost: float, estimated_wait_s: float, in_flight: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch_done(self, n_jobs: int, seconds: float, ok: bool) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 8
    max_queue_delay_s: float = 0.010
    max_queue_size: int = 64  # queued jobs (not requests), not counting the running batch
    retry_after_s: float = 1.0  # Retry-After while no throughput has been measured yet
    max_queue_cost: float = float("inf")  # queued cost units, not counting the running batch
    max_request_cost: float = float("inf")  # one request's cost; above it: RequestTooCostlyError
    admission_headroom: float = 0.9  # admit only when the estimated wait < headroom x deadline
    max_retry_after_s: float = 60.0
    ewma_alpha: float = 0.3  # weight of a batch faster than the seconds-per-cost-unit estimate
    ewma_alpha_up: float = 0.7  # weight of a batch slower than it (admission errs on the safe side)
    cold_start_jobs: int | None = None  # queued jobs allowed before any throughput was measured (None: no limit)


class ThroughputEstimate:
    """Seconds per cost unit of the worker: an EWMA per bucket, and one over all buckets as the fallback.

    Asymmetric, because admission must rather refuse than let work time out: a batch slower than
    the estimate moves it up with weight ``alpha_up``, a faster one down with ``alpha``.
    """

    def __init__(self, alpha: float, alpha_up: float | None = None) -> None:
        if not 0 < alpha <= 1 or not 0 < (alpha_up or alpha) <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        self._alpha = alpha
        self._alpha_up = max(alpha, alpha_up or alpha)
        self._per_key: dict[Hashable, float] = {}
        self._overall: float | None = None

    def _mix(self, old: float | None, new: float) -> float:
        if old is None:
            return new
        alpha = self._alpha_up if new > old else self._alpha
        return (1 - alpha) * old + alpha * new

    def observe(self, key: Hashable, cost: float, seconds: float) -> None:
        if cost <= 0 or seconds < 0:
            return
        rate = seconds / cost
        self._per_key[key] = self._mix(self._per_key.get(key), rate)
        self._overall = self._mix(self._overall, rate)

    def seconds_per_unit(self, key: Hashable) -> float | None:
        """The bucket's own estimate, else the overall one, else None (nothing measured yet)."""
        return self._per_key.get(key, self._overall)

    def seconds(self, key: Hashable, cost: float) -> float:
        rate = self.seconds_per_unit(key)
        return 0.0 if rate is None else rate * cost


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class Ticket(Generic[J, R]):
    """A submitted request: await ``future`` for its results; ``cancel()`` drops it if still queued."""

    key: Hashable
    jobs: tuple[J, ...]
    future: asyncio.Future
    enqueued_at: float
    seq: int
    cost: float
    _scheduler: BatchScheduler = field(repr=False)
    state: _State = _State.QUEUED
    abandoned: bool = False  # the client left while the batch was running
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def cancel(self) -> bool:
        """Drop the request if its batch has not started; True when dropped.

        Once running, the request is marked abandoned instead: its batch stops at
        the next diffusion step if every request in it was abandoned.
        """
        return self._scheduler._cancel(self)

    @property
    def started(self) -> bool:
        return self.state is not _State.QUEUED


class BatchScheduler(Generic[J, R]):
    """Bucketed dynamic batcher around a blocking ``run_batch(jobs) -> results``."""

    def __init__(
        self,
        run_batch: Callable[[list[J]], Sequence[R]],
        config: SchedulerConfig = SchedulerConfig(),
        observer: SchedulerObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        cost_of: Callable[[J], float] = lambda job: 1.0,
    ) -> None:
        if config.max_batch_size < 1 or config.max_queue_size < 1:
            raise ValueError("max_batch_size and max_queue_size must be at least 1")
        if config.max_queue_cost <= 0 or config.max_request_cost <= 0 or not 0 < config.admission_headroom <= 1:
            raise ValueError("max_queue_cost and max_request_cost must be positive, admission_headroom in (0, 1]")
        self._run_batch = run_batch
        self.config = config
        self._observer = observer or _NullObserver()
        self._clock = clock
        self._cost_of = cost_of
        self.throughput = ThroughputEstimate(config.ewma_alpha, config.ewma_alpha_up)
        self._buckets: dict[Hashable, collections.deque[Ticket]] = {}
        self._queued_jobs = 0
        self._queued_cost = 0.0
        self._seq = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._accepting = False
        self._running_batch = False
        self._running: list[Ticket] = []
        self._running_started = 0.0
        self._stop_error: ServiceError | None = None
        self._heartbeat = clock()

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-worker")
        self._wakeup = asyncio.Event()
        self._accepting = True
        self._task = asyncio.create_task(self._loop(), name="batch-scheduler")
        self._task.add_done_callback(self._on_loop_exit)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queued_jobs(self) -> int:
        return self._queued_jobs

    @property
    def queued_cost(self) -> float:
        return self._queued_cost

    @property
    def in_flight(self) -> int:
        """Requests queued or in the running batch."""
        return sum(len(bucket) for bucket in self._buckets.values()) + len(self._running)

    @property
    def idle(self) -> bool:
        return self._queued_jobs == 0 and not self._running_batch

    def queued_by_bucket(self) -> dict[Hashable, int]:
        """Jobs waiting per bucket key (the running batch not counted): the batches a new request could join."""
        return {key: sum(len(t.jobs) for t in bucket) for key, bucket in self._buckets.items() if bucket}

    def estimated_wait(self) -> float:
        """Seconds until a request submitted now could start: the running batch's rest plus all queued work.

        A running batch that has already taken longer than estimated shows that the worker is slower
        now (a busier machine, larger images): its pace so far then prices the queued work too.
        """
        wait, slowdown = 0.0, 1.0
        if self._running:
            key, running_cost = self._running[0].key, sum(t.cost for t in self._running)
            expected = self.throughput.seconds(key, running_cost)
            elapsed = self._clock() - self._running_started
            if expected > 0 and elapsed > expected:
                slowdown = elapsed / expected
                wait += 0.25 * expected  # overrunning: assume a quarter of the estimate is still ahead
            else:
                wait += max(0.0, expected - elapsed)  # nothing measured yet: expected is 0
        for key, bucket in self._buckets.items():
            wait += slowdown * self.throughput.seconds(key, sum(t.cost for t in bucket))
        return wait

    # -- liveness and stopping the running batch ------------------------------
    def should_stop(self) -> bool:
        """Called by the model between steps (worker thread): True when the running batch should stop.

        Also the worker's heartbeat: ``stalled_for`` measures from the last call.
        """
        self._heartbeat = self._clock()
        if self._stop_error is not None:
            return True
        running = self._running
        return bool(running) and all(t.abandoned for t in running)

    def stalled_for(self) -> float:
        """Seconds since the running batch last showed progress; 0 when the worker is idle."""
        if not self._running_batch:
            return 0.0
        return max(0.0, self._clock() - self._heartbeat)

    def stop_running(self, error: ServiceError) -> None:
        """Ask the running batch to stop at its next step; its requests fail with ``error``."""
        if self._running_batch:
            self._stop_error = error

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop accepting; wait until every accepted request finished. True when fully drained."""
        self._accepting = False
        self._poke()
        deadline = None if timeout_s is None else self._clock() + timeout_s
        while not self.idle:
            if deadline is not None and self._clock() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def fail_queued(self, error: BaseException) -> int:
        """Fail every queued (not running) request with ``error``; the number failed."""
        failed = 0
        for bucket in list(self._buckets.values()):
            for ticket in list(bucket):
                self._remove(ticket)
                self._finish(ticket, exc=error)
                failed += 1
        return failed

    async def close(self) -> None:
        """Stop the loop; fail whatever is still queued with ``DrainingError``."""
        self._accepting = False
        self.fail_queued(DrainingError("the decoder is shutting down; retry on another instance", retry_after_s=5))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def call_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the batch worker thread (model loading and warm-up use the same thread)."""
        if self._executor is None:
            raise RuntimeError("start() the scheduler first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _on_loop_exit(self, task: asyncio.Task) -> None:
        """If the loop ever dies of a bug, fail what is queued instead of hanging it."""
        if task.cancelled() or task.exception() is None:
            return
        self._accepting = False
        self.fail_queued(RuntimeError(f"batch scheduler stopped: {task.exception()!r}"))

    # -- submitting --------------------------------------------------------
    def _retry_after(self, key: Hashable, excess_cost: float) -> float:
        """Seconds until ``excess_cost`` units of queued work have run, by the current estimate."""
        rate = self.throughput.seconds_per_unit(key)
        seconds = self.config.retry_after_s if rate is None else rate * excess_cost
        return min(self.config.max_retry_after_s, max(1.0, seconds))

    def _check_accepting(self) -> None:
        if self._task is None or not self._accepting:
            self._observer.rejected("draining")
            raise DrainingError("the decoder is shutting down and accepts no new requests", retry_after_s=5)

    def check_capacity(self, timeout_s: float | None = None) -> None:
        """Refuse before a request is even read: draining, a queue already at capacity, or (with the
        request's deadline, known from its headers) an estimated wait that deadline cannot meet."""
        self._check_accepting()
        if self._queued_jobs >= self.config.max_queue_size or self._queued_cost >= self.config.max_queue_cost:
            self._observer.rejected("queue_full")
            excess = self._queued_cost - self.config.max_queue_cost
            raise QueueFullError(
                f"decode queue is full ({self._queued_jobs} jobs, {self._queued_cost:.1f} cost units queued); "
                "retry after the Retry-After delay",
                retry_after_s=self._retry_after(None, max(excess, self._queued_cost / max(1, self._queued_jobs))))
        if timeout_s is not None:
            self._check_wait(timeout_s)

    def _check_wait(self, timeout_s: float) -> None:
        wait = self.estimated_wait()
        allowed = self.config.admission_headroom * timeout_s
        if wait > allowed:
            self._observer.rejected("overloaded")
            raise QueueFullError(
                f"the decoder is overloaded: the estimated wait before this request could start is {wait:.1f} s, "
                f"beyond its {timeout_s:.0f} s deadline; retry after the Retry-After delay",
                retry_after_s=min(self.config.max_retry_after_s, max(1.0, wait - allowed)))

    def submit(self, key: Hashable, jobs: Sequence[J], *, timeout_s: float | None = None) -> Ticket[J, R]:
        """Queue a group of jobs; raise at once when refused.

        ``DrainingError`` while draining, ``RequestTooCostlyError`` above ``max_request_cost``,
        ``QueueFullError`` (with a computed ``retry_after_s``) when the queue is at capacity or
        the estimated wait would not leave the request time to finish within ``timeout_s``.
        """
        if not jobs:
            raise ValueError("submit needs at least one job")
        self._check_accepting()
        cost = float(sum(self._cost_of(job) for job in jobs))
        config = self.config
        if cost > config.max_request_cost:
            self._observer.rejected("too_costly")
            raise RequestTooCostlyError(
                f"this request costs {cost:.1f} units of work, over this decoder's limit of "
                f"{config.max_request_cost:.1f} (max_request_cost); ask for fewer candidates or a smaller image")
        # A group larger than the whole queue (many candidates) is admitted into an empty queue only.
        if self._queued_jobs and self._queued_jobs + len(jobs) > config.max_queue_size:
            self._observer.rejected("queue_full")
            raise QueueFullError(
                f"decode queue is full ({self._queued_jobs} of {config.max_queue_size} jobs queued); "
                "retry after the Retry-After delay",
                retry_after_s=self._retry_after(key, cost * (self._queued_jobs + len(jobs) - config.max_queue_size)
                                                / len(jobs)))
        if self._queued_jobs and self._queued_cost + cost > config.max_queue_cost:
            self._observer.rejected("queue_full")
            raise QueueFullError(
                f"decode queue is full ({self._queued_cost:.1f} of {config.max_queue_cost:.1f} cost units queued); "
                "retry after the Retry-After delay",
                retry_after_s=self._retry_after(key, self._queued_cost + cost - config.max_queue_cost))
        if config.cold_start_jobs is not None and self._queued_jobs and self.throughput.seconds_per_unit(key) is None \
                and self._queued_jobs + len(jobs) > config.cold_start_jobs:
            # Nothing measured yet (a cold start): admit one batch's worth until the first batch has run.
            self._observer.rejected("overloaded")
            raise QueueFullError("the decoder has not measured its throughput yet and already holds "
                                 f"{self._queued_jobs} jobs; "
                                 "retry after the Retry-After delay", retry_after_s=config.retry_after_s)
        if timeout_s is not None:
            self._check_wait(timeout_s)
        loop = asyncio.get_running_loop()
        ticket: Ticket[J, R] = Ticket(
            key=key, jobs=tuple(jobs), future=loop.create_future(), enqueued_at=self._clock(),
            seq=next(self._seq), cost=cost, _scheduler=self,
        )
        self._buckets.setdefault(key, collections.deque()).append(ticket)
        self._queued_jobs += len(ticket.jobs)
        self._queued_cost += cost
        self._report_queue()
        if timeout_s is not None:
            ticket._timer = loop.call_later(max(0.0, timeout_s), self._expire, ticket)
        self._poke()
        return ticket

    async def run(self, key: Hashable, jobs: Sequence[J], *, timeout_s: float | None = None) -> list[R]:
        """Submit and wait; cancelling the caller drops the request if it has not started."""
        ticket = self.submit(key, jobs, timeout_s=timeout_s)
        try:
            return await asyncio.shield(ticket.future)
        except asyncio.CancelledError:
            ticket.cancel()
            raise

    # -- internals ---------------------------------------------------------
    def _poke(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _remove(self, ticket: Ticket) -> None:
        bucket = self._buckets.get(ticket.key)
        if bucket is not None:
            bucket.remove(ticket)
            if not bucket:
                del self._buckets[ticket.key]
        self._queued_jobs -= len(ticket.jobs)
        self._queued_cost = max(0.0, self._queued_cost - ticket.cost) if self._queued_jobs else 0.0
        self._report_queue()

    def _report_queue(self) -> None:
        self._observer.queue_size(self._queued_jobs)
        self._observer.queue_load(self._queued_cost, self.estimated_wait(), self.in_flight)

    def _finish(self, ticket: Ticket, *, result: Any = None, exc: BaseException | None = None) -> None:
        ticket.state = _State.DONE
        if ticket._timer is not None:
            ticket._timer.cancel()
        if ticket.future.done():
            return
        if exc is not None:
            ticket.future.set_exception(exc)
            ticket.future.exception()  # mark retrieved: a dropped waiter must not log a warning
        else:
            ticket.future.set_result(result)

    def _cancel(self, ticket: Ticket) -> bool:
        if ticket.state is _State.RUNNING:
            ticket.abandoned = True
            return False
        if ticket.state is not _State.QUEUED:
            return False
        self._remove(ticket)
        self._observer.rejected("cancelled")
        self._finish(ticket, exc=RequestCancelledError("the client disconnected before its batch started"))
        self._poke()
        return True

    def _expire(self, ticket: Ticket) -> None:
        if ticket.state is not _State.QUEUED:
            return  # already running: let it finish
        self._remove(ticket)
        self._observer.rejected("deadline")
        waited = self._clock() - ticket.enqueued_at
        self._finish(ticket, exc=DeadlineExceededError(
            f"request waited {waited:.2f} s in the decode queue and its deadline passed; "
            "retry later or raise the deadline (request_timeout_s)"))
        self._poke()

    def _bucket_jobs(self, bucket: collections.deque[Ticket]) -> int:
        return sum(len(t.jobs) for t in bucket)

    def _pick(self, now: float) -> tuple[Hashable | None, float | None]:
        """The due bucket with the oldest head, else (None, seconds until the next one is due)."""
        best_key, best_head, next_due = None, None, None
        for key, bucket in self._buckets.items():
            head = bucket[0]
            due_at = head.enqueued_at + self.config.max_queue_delay_s
            full = self._bucket_jobs(bucket) >= self.config.max_batch_size
            if full or now >= due_at or not self._accepting:
                if best_head is None or (head.enqueued_at, head.seq) < (best_head.enqueued_at, best_head.seq):
                    best_key, best_head = key, head
            else:
                next_due = due_at if next_due is None else min(next_due, due_at)
        if best_key is not None:
            return best_key, None
        return None, None if next_due is None else max(0.0, next_due - now)

    def _take(self, key: Hashable) -> list[Ticket]:
        """Pop whole groups from a bucket's head up to ``max_batch_size`` jobs (at least one group)."""
        bucket = self._buckets[key]
        taken: list[Ticket] = []
        n_jobs = 0
        while bucket and (not taken or n_jobs + len(bucket[0].jobs) <= self.config.max_batch_size):
            ticket = bucket[0]
            self._remove(ticket)
            taken.append(ticket)
            n_jobs += len(ticket.jobs)
        return taken

    async def _loop(self) -> None:
        if self._wakeup is None:
            raise RuntimeError("start() the scheduler first")
        loop = asyncio.get_running_loop()
        while True:
            key, wait_s = self._pick(self._clock())
            if key is None:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait_s)
                except asyncio.TimeoutError:
                    pass
                continue
            tickets = self._take(key)
            now = self._clock()
            for ticket in tickets:
                ticket.state = _State.RUNNING
                if ticket._timer is not None:
                    ticket._timer.cancel()
                self._observer.queue_wait(now - ticket.enqueued_at)
            jobs = [job for ticket in tickets for job in ticket.jobs]
            self._running_batch = True
            self._running = tickets
            self._running_started = self._heartbeat = now
            self._report_queue()
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_checked, jobs)
            except Exception as exc:  # noqa: BLE001 - a failing batch fails exactly its requests
                self._observer.batch_done(len(jobs), time.perf_counter() - started, False)
                if isinstance(exc, DecodeInterruptedError):
                    exc = self._stop_error or RequestCancelledError("every client of this batch disconnected")
                for ticket in tickets:
                    self._finish(ticket, exc=exc)
            else:
                seconds = time.perf_counter() - started
                self._observer.batch_done(len(jobs), seconds, True)
                self.throughput.observe(key, sum(t.cost for t in tickets), seconds)
                offset = 0
                for ticket in tickets:
                    self._finish(ticket, result=list(results[offset:offset + len(ticket.jobs)]))
                    offset += len(ticket.jobs)
            finally:
                self._running_batch = False
                self._running = []
                self._stop_error = None
                self._report_queue()

    def _run_checked(self, jobs: list[J]) -> Sequence[R]:
        results = self._run_batch(jobs)
        if len(results) != len(jobs):
            raise RuntimeError(f"batch returned {len(results)} results for {len(jobs)} jobs")
        return results
