"""When to refresh, and one scheduler that runs due work for every object.

The timing functions are pure (a clock value and a random source come in as arguments).
The Scheduler keeps one heap of due times for all objects and runs due work on a bounded
number of tasks: one scheduler, not one daemon per object, so memory stays flat at ten
thousand clients."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable

from oauth_token_operator.resource.spec import RefreshPolicy

log = logging.getLogger(__name__)

# Transient failures: exponential backoff with equal jitter, capped so that a token that is
# still valid gets several more tries before it expires.
BACKOFF_BASE = 5.0
BACKOFF_CAP = 300.0
# A rotated refresh token that could not be written yet is retried at most this far apart.
HELD_TOKEN_RETRY = 4.0
# Failures that need a person (invalid_client, invalid_grant, ...): retry slowly; a change of
# the spec or the credentials Secret retries at once.
HUMAN_RETRY_BASE = 300.0
HUMAN_RETRY_CAP = 3600.0
# A Retry-After beyond this is treated as this: a misbehaving provider must not park a client
# for days.
RETRY_AFTER_CAP = 3600.0
# Two exchanges of one client are never closer than this, whatever the spec or the provider's
# answer says: a token that lives shorter is reported (TokenTooShortLived), not chased.
MIN_EXCHANGE_INTERVAL = 10.0


def next_exchange_allowed(last_exchange: float | None) -> float:
    """The earliest time of the next exchange of a client (0: any time)."""
    return 0.0 if last_exchange is None else last_exchange + MIN_EXCHANGE_INTERVAL


def too_short_lived(issued_at: float, expires_at: float) -> bool:
    """A token that is already expired, or expires before the next exchange may happen."""
    return expires_at - issued_at <= MIN_EXCHANGE_INTERVAL


def refresh_at(
    issued_at: float,
    expires_at: float,
    policy: RefreshPolicy,
    propagation_margin: float,
    rng: random.Random,
) -> float:
    """The time to start the next exchange for a token valid from issued_at to expires_at.

    Refresh when max(renewBefore or pct x lifetime, propagation margin) remains, so that
    kubelet has time to update mounted files; jitter only ever moves the time earlier. Never
    sooner than min_interval after issue (no hot loop on short-lived tokens), but a token that
    lives shorter than twice min_interval is refreshed at half its lifetime instead of late;
    and never sooner than MIN_EXCHANGE_INTERVAL, whatever the token or the policy.
    """
    lifetime = max(expires_at - issued_at, 0.0)
    if policy.renew_before is not None:
        margin = policy.renew_before
    else:
        margin = lifetime * policy.renew_before_percentage / 100
    margin = min(max(margin, propagation_margin), lifetime * 0.9)
    margin += rng.uniform(0.0, margin * policy.jitter_percentage / 100)
    floor = issued_at + max(min(policy.min_interval, lifetime / 2), MIN_EXCHANGE_INTERVAL)
    return max(expires_at - margin, floor)


def _jittered_backoff(failures: int, base: float, cap: float, rng: random.Random) -> float:
    delay = min(cap, base * 2 ** min(max(failures - 1, 0), 32))  # bounded: no overflow
    return rng.uniform(delay / 2, delay)


def retry_delay(
    failures: int, retry_after: float | None, needs_human: bool, rng: random.Random
) -> float:
    """Seconds until the next try after the n-th consecutive failure (n >= 1)."""
    if needs_human:
        delay = _jittered_backoff(failures, HUMAN_RETRY_BASE, HUMAN_RETRY_CAP, rng)
    else:
        delay = _jittered_backoff(failures, BACKOFF_BASE, BACKOFF_CAP, rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


Work = Callable[[Hashable], Awaitable[float | None]]


class Scheduler:
    """Runs work(key) for each key at its due time, at most `concurrency` at once and never
    twice at once for one key. work returns the next due time (epoch seconds), or None to
    stop scheduling the key. A schedule() for a key that is running applies after it ends
    (the earlier of the two times wins), so a trigger during a run is not lost."""

    def __init__(
        self,
        work: Work,
        concurrency: int,
        clock: Callable[[], float] = time.time,
        started: Callable[[float], None] = lambda delay: None,
    ) -> None:
        self._work = work
        self._clock = clock
        # Told how late each run starts (seconds after its due time): runs that wait for a
        # free slot mean the replica carries more than it can do on time.
        self._started = started
        self._slots = concurrency
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._requested_while_running: dict[Hashable, float] = {}
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self._forgotten: set[Hashable] = set()  # forgotten while running
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._draining = False
        self._paused = False

    def __len__(self) -> int:
        return len(self._due) + len(self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    def due_time(self, key: Hashable) -> float | None:
        return self._due.get(key)

    def schedule(self, key: Hashable, at: float) -> None:
        """Sets the key's next run to `at`, replacing any later or earlier time."""
        if key in self._running:
            earlier = self._requested_while_running.get(key, at)
            self._requested_while_running[key] = min(at, earlier)
            return
        self._due[key] = at
        heapq.heappush(self._heap, (at, next(self._seq), key))
        self._wake.set()

    def schedule_now(self, key: Hashable) -> None:
        self.schedule(key, self._clock())

    def forget(self, key: Hashable) -> None:
        """Stops scheduling the key; a run in progress finishes but is not rescheduled."""
        self._due.pop(key, None)
        self._requested_while_running.pop(key, None)
        if key in self._running:
            self._forgotten.add(key)

    def pause(self) -> None:
        """Starts no more work until resume(); schedule() still records due times."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def forget_all(self) -> None:
        for key in list(self._due) + list(self._running):
            self.forget(key)

    async def run(self) -> None:
        """The scheduling loop; runs until cancelled, then cancels work in progress."""
        try:
            while True:
                self._start_due_work()
                await self._sleep_until_next()
        finally:
            for task in list(self._running.values()):
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def drain(self, grace: float) -> int:
        """Starts no more work and waits up to `grace` seconds for work in progress, then
        cancels what is left (work in a section that must not stop halfway finishes that
        section first; see exchange.uncancellable). Returns how many runs were cancelled."""
        self._draining = True
        running = list(self._running.values())
        if not running:
            return 0
        log.info("draining: waiting up to %.0fs for %d runs in progress", grace, len(running))
        _, pending = await asyncio.wait(running, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    def _start_due_work(self) -> None:
        if self._draining or self._paused:
            return
        now = self._clock()
        while self._heap and len(self._running) < self._slots:
            at, _, key = self._heap[0]
            if self._due.get(key) != at:  # stale entry: rescheduled or forgotten since
                heapq.heappop(self._heap)
                continue
            if at > now:
                return
            heapq.heappop(self._heap)
            del self._due[key]
            self._started(now - at)
            self._running[key] = asyncio.create_task(self._run_one(key), name=f"refresh {key}")

    async def _sleep_until_next(self) -> None:
        self._wake.clear()
        timeout = None  # draining or paused: nothing starts, so nothing to wake up for
        idle = self._draining or self._paused
        if self._heap and len(self._running) < self._slots and not idle:
            timeout = max(self._heap[0][0] - self._clock(), 0.0)
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for drops a cancellation that
        # arrives as the event is set, and a stop right after a drain then never ended.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _run_one(self, key: Hashable) -> None:
        next_at: float | None
        try:
            next_at = await self._work(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The work reports its own failures; this is a bug. Retry later, never hot.
            log.exception("refresh of %s failed unexpectedly; retrying in 60s", key)
            next_at = self._clock() + 60.0
        finally:
            del self._running[key]
            self._wake.set()
        if key in self._forgotten:
            self._forgotten.discard(key)
            next_at = None
        # Only a schedule() after the forget() can have left a request here.
        requested = self._requested_while_running.pop(key, None)
        if requested is not None:
            next_at = requested if next_at is None else min(next_at, requested)
        if next_at is not None:
            self.schedule(key, next_at)
