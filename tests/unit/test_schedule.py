"""When to refresh (pure timing rules) and the Scheduler that runs due work."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable, Hashable

import pytest

from oauth_token_operator.engine.schedule import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    HUMAN_RETRY_BASE,
    HUMAN_RETRY_CAP,
    MIN_EXCHANGE_INTERVAL,
    RETRY_AFTER_CAP,
    Scheduler,
    refresh_at,
    retry_delay,
    too_short_lived,
)
from oauth_token_operator.resource.spec import RefreshPolicy

# The Scheduler tests run on a fake event-loop clock (looptime): deterministic, and as fast
# as the work, however busy the machine.
pytestmark = pytest.mark.looptime

ISSUED = 1_700_000_000.0
HOUR = 3600.0
SEEDS = range(300)


def rngs() -> list[random.Random]:
    return [random.Random(seed) for seed in SEEDS]


# --- refresh_at ---------------------------------------------------------------------------


def test_percentage_rule_refreshes_a_third_before_expiry() -> None:
    policy = RefreshPolicy()  # 33 %, 10 % jitter
    expires = ISSUED + HOUR
    margin = 0.33 * HOUR
    for rng in rngs():
        due = refresh_at(ISSUED, expires, policy, propagation_margin=90.0, rng=rng)
        # About 40 minutes after issue; jitter only ever moves it earlier.
        assert expires - margin * 1.10 - 1e-6 <= due <= expires - margin + 1e-6
        assert 37 * 60 < due - ISSUED <= 40.2 * 60


def test_jitter_actually_spreads_refreshes() -> None:
    dues = {refresh_at(ISSUED, ISSUED + HOUR, RefreshPolicy(), 90.0, rng) for rng in rngs()}
    assert max(dues) - min(dues) > 60  # 10 % of a 20-minute margin is two minutes


def test_no_jitter_is_exact() -> None:
    policy = RefreshPolicy(jitter_percentage=0, renew_before_percentage=50)
    due = refresh_at(ISSUED, ISSUED + HOUR, policy, 90.0, random.Random(1))
    assert due == pytest.approx(ISSUED + HOUR / 2)


def test_renew_before_overrides_percentage() -> None:
    policy = RefreshPolicy(renew_before=600.0, renew_before_percentage=90)
    expires = ISSUED + HOUR
    for rng in rngs():
        due = refresh_at(ISSUED, expires, policy, 90.0, rng)
        assert expires - 600 * 1.10 - 1e-6 <= due <= expires - 600 + 1e-6


def test_propagation_margin_wins_when_larger() -> None:
    # 1 % of an hour is 36 s, less than the time kubelet needs to update mounted files.
    policy = RefreshPolicy(renew_before_percentage=1)
    expires = ISSUED + HOUR
    for rng in rngs():
        due = refresh_at(ISSUED, expires, policy, propagation_margin=120.0, rng=rng)
        assert expires - 120 * 1.10 - 1e-6 <= due <= expires - 120 + 1e-6


def test_propagation_margin_wins_over_small_renew_before() -> None:
    policy = RefreshPolicy(renew_before=10.0, jitter_percentage=0)
    due = refresh_at(ISSUED, ISSUED + HOUR, policy, 90.0, random.Random(0))
    assert due == pytest.approx(ISSUED + HOUR - 90)


def test_min_interval_prevents_hot_loop_after_issue() -> None:
    # renewBefore larger than the lifetime would mean "refresh at once" without the floor.
    policy = RefreshPolicy(renew_before=2 * HOUR, min_interval=300.0)
    for rng in rngs():
        due = refresh_at(ISSUED, ISSUED + HOUR, policy, 90.0, rng)
        assert due >= ISSUED + 300.0
        assert due < ISSUED + HOUR


@pytest.mark.parametrize("lifetime", [21.0, 30.0, 45.0, 59.0])
def test_very_short_tokens_refresh_by_half_lifetime_and_before_expiry(lifetime: float) -> None:
    policy = RefreshPolicy(min_interval=30.0)  # lifetime < 2 * min_interval
    expires = ISSUED + lifetime
    for rng in rngs():
        due = refresh_at(ISSUED, expires, policy, 90.0, rng)
        assert due <= ISSUED + lifetime / 2 + 1e-9
        assert due < expires
        assert due >= ISSUED + MIN_EXCHANGE_INTERVAL


@pytest.mark.parametrize("lifetime", [-5.0, 0.0, 1.0, 5.0, 10.0])
def test_tokens_too_short_to_refresh_in_time_are_not_chased(lifetime: float) -> None:
    """expires_in 1, a JWT already expired: the next exchange waits for the hard floor (the
    run reports TokenTooShortLived) instead of a tight loop."""
    policy = RefreshPolicy(min_interval=0.0, renew_before=0.001)
    for rng in rngs():
        due = refresh_at(ISSUED, ISSUED + lifetime, policy, 0.0, rng)
        assert due == ISSUED + MIN_EXCHANGE_INTERVAL
    assert too_short_lived(ISSUED, ISSUED + lifetime)
    assert not too_short_lived(ISSUED, ISSUED + MIN_EXCHANGE_INTERVAL + 1)


@pytest.mark.parametrize(
    "policy",
    [
        RefreshPolicy(),
        RefreshPolicy(renew_before_percentage=1, jitter_percentage=0, min_interval=0.0),
        RefreshPolicy(renew_before_percentage=90, jitter_percentage=50),
        RefreshPolicy(renew_before=0.001, jitter_percentage=50, min_interval=0.0),
        RefreshPolicy(renew_before=10 * HOUR, jitter_percentage=50),
        RefreshPolicy(min_interval=10 * HOUR),
    ],
)
@pytest.mark.parametrize("lifetime", [0.5, 5.0, 25.0, 60.0, HOUR, 864000.0])
@pytest.mark.parametrize("margin", [0.0, 90.0, 600.0])
def test_due_is_before_expiry_and_never_inside_the_floor(
    policy: RefreshPolicy, lifetime: float, margin: float
) -> None:
    for seed in range(30):
        due = refresh_at(ISSUED, ISSUED + lifetime, policy, margin, random.Random(seed))
        assert due >= ISSUED + MIN_EXCHANGE_INTERVAL
        if not too_short_lived(ISSUED, ISSUED + lifetime):
            assert due < ISSUED + lifetime


def test_ten_day_token_refreshes_days_before_expiry() -> None:
    lifetime = 864000.0
    due = refresh_at(ISSUED, ISSUED + lifetime, RefreshPolicy(), 90.0, random.Random(3))
    assert ISSUED + lifetime - due >= 0.33 * lifetime - 1e-6


# --- retry_delay --------------------------------------------------------------------------


def test_transient_backoff_grows_exponentially_with_jitter() -> None:
    means: list[float] = []
    for failures in range(1, 8):
        expected = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))
        delays = [retry_delay(failures, None, False, rng) for rng in rngs()]
        assert all(expected / 2 - 1e-9 <= d <= expected + 1e-9 for d in delays)
        assert max(delays) - min(delays) > 0  # jittered
        means.append(sum(delays) / len(delays))
    assert all(b > a * 1.5 for a, b in itertools.pairwise(means) if b < BACKOFF_CAP / 2)
    assert means[-1] > means[0] * 10


def test_transient_backoff_is_capped() -> None:
    for failures in (10, 20, 60, 100):
        for rng in rngs()[:50]:
            delay = retry_delay(failures, None, False, rng)
            assert BACKOFF_CAP / 2 <= delay <= BACKOFF_CAP


def test_backoff_survives_a_long_outage() -> None:
    """A provider down for days (about 1000+ failures at the 300 s cap) or a client whose
    credentials stay wrong for weeks must keep a capped delay, not crash."""
    rng = random.Random(0)
    assert BACKOFF_CAP / 2 <= retry_delay(1025, None, False, rng) <= BACKOFF_CAP
    assert HUMAN_RETRY_CAP / 2 <= retry_delay(1025, None, True, rng) <= HUMAN_RETRY_CAP
    assert BACKOFF_CAP / 2 <= retry_delay(2000, None, False, rng) <= BACKOFF_CAP
    assert HUMAN_RETRY_CAP / 2 <= retry_delay(2000, None, True, rng) <= HUMAN_RETRY_CAP


def test_needs_human_retries_slowly() -> None:
    for failures in (1, 2, 5, 50):
        for rng in rngs()[:50]:
            delay = retry_delay(failures, None, True, rng)
            assert delay >= HUMAN_RETRY_BASE / 2
            assert delay <= HUMAN_RETRY_CAP
    assert HUMAN_RETRY_BASE / 2 > BACKOFF_BASE * 10


def test_retry_after_is_honoured() -> None:
    for rng in rngs()[:50]:
        assert retry_delay(1, 120.0, False, rng) >= 120.0
        # A short Retry-After does not make a human-needed retry hot.
        assert retry_delay(1, 1.0, True, rng) >= HUMAN_RETRY_BASE / 2


def test_retry_after_is_capped() -> None:
    for rng in rngs()[:50]:
        delay = retry_delay(1, 30 * 86400.0, False, rng)
        assert delay == pytest.approx(RETRY_AFTER_CAP)


# --- Scheduler ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def now() -> float:
    """The event loop's clock: under looptime it is fake and moves only when the loop would
    otherwise sleep, so these tests neither wait in real time nor depend on a busy machine."""
    return asyncio.get_running_loop().time()


async def wait_for(predicate: Callable[[], bool], within: float = 1.5) -> None:
    deadline = now() + within
    while not predicate():
        if now() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_runs_due_keys_and_not_future_ones() -> None:
    ran: list[Hashable] = []

    async def work(key: Hashable) -> float | None:
        ran.append(key)
        return None

    scheduler = Scheduler(work, concurrency=4, clock=now)
    t0 = now()
    scheduler.schedule("a", t0 - 1)
    scheduler.schedule("b", t0)
    scheduler.schedule("later", t0 + 3600)
    async with running(scheduler):
        await wait_for(lambda: len(ran) == 2)
        await asyncio.sleep(0.05)
    assert sorted(map(str, ran)) == ["a", "b"]
    assert scheduler.due_time("later") == t0 + 3600


async def test_runs_a_key_when_its_time_comes() -> None:
    ran_at: list[float] = []

    async def work(key: Hashable) -> float | None:
        ran_at.append(now())
        return None

    scheduler = Scheduler(work, concurrency=1, clock=now)
    at = now() + 0.15
    async with running(scheduler):
        scheduler.schedule("k", at)
        await wait_for(lambda: bool(ran_at))
    assert ran_at[0] >= at - 0.01


async def test_returned_time_reschedules() -> None:
    runs = 0

    async def work(key: Hashable) -> float | None:
        nonlocal runs
        runs += 1
        return now() + 0.02 if runs < 3 else None

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule_now("k")
    async with running(scheduler):
        await wait_for(lambda: runs == 3)
        await asyncio.sleep(0.1)
    assert runs == 3
    assert scheduler.due_time("k") is None
    assert len(scheduler) == 0


async def test_concurrency_is_bounded() -> None:
    active = peak = done = 0

    async def work(key: Hashable) -> float | None:
        nonlocal active, peak, done
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.03)
        active -= 1
        done += 1
        return None

    scheduler = Scheduler(work, concurrency=3, clock=now)
    for i in range(12):
        scheduler.schedule_now(i)
    async with running(scheduler):
        await wait_for(lambda: done == 12)
    assert peak == 3  # the pool is used, and never exceeded


async def test_one_key_never_runs_twice_at_once() -> None:
    active: dict[Hashable, int] = {}
    overlap = False
    runs = 0

    async def work(key: Hashable) -> float | None:
        nonlocal overlap, runs
        active[key] = active.get(key, 0) + 1
        overlap = overlap or active[key] > 1
        runs += 1
        await asyncio.sleep(0.05)
        active[key] -= 1
        return None

    scheduler = Scheduler(work, concurrency=8, clock=now)
    scheduler.schedule_now("k")
    async with running(scheduler):
        await wait_for(lambda: runs == 1)
        for _ in range(5):  # triggers while it runs
            scheduler.schedule_now("k")
            await asyncio.sleep(0.005)
        await wait_for(lambda: runs == 2)
        await asyncio.sleep(0.1)
    assert not overlap
    assert runs == 2  # the triggers during the run collapse into one run after it


async def test_schedule_during_run_applies_after_run_and_earlier_time_wins() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    far = now() + 3600

    async def work(key: Hashable) -> float | None:
        started.set()
        await release.wait()
        return far  # the run's own answer: an hour from now

    scheduler = Scheduler(work, concurrency=2, clock=now)
    scheduler.schedule_now("k")
    async with running(scheduler):
        await started.wait()
        soon = now() + 1800
        scheduler.schedule("k", soon)
        scheduler.schedule("k", soon + 60)  # a later request does not push it back
        assert scheduler.due_time("k") is None  # not applied while running
        release.set()
        await wait_for(lambda: scheduler.due_time("k") is not None)
    assert scheduler.due_time("k") == soon


async def test_run_answer_wins_when_earlier_than_request_during_run() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    answer = now() + 600

    async def work(key: Hashable) -> float | None:
        started.set()
        await release.wait()
        return answer

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule_now("k")
    async with running(scheduler):
        await started.wait()
        scheduler.schedule("k", answer + 600)
        release.set()
        await wait_for(lambda: scheduler.due_time("k") is not None)
    assert scheduler.due_time("k") == answer


async def test_forget_stops_rescheduling() -> None:
    runs = 0

    async def work(key: Hashable) -> float | None:
        nonlocal runs
        runs += 1
        return now() + 0.02

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule_now("k")
    async with running(scheduler):
        await wait_for(lambda: runs >= 2)
        scheduler.forget("k")
        count = runs
        await asyncio.sleep(0.15)
        assert runs <= count + 1  # at most the run in progress finishes
        assert scheduler.due_time("k") is None
    assert len(scheduler) == 0


async def test_forget_while_running_drops_the_next_run() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    runs = 0

    async def work(key: Hashable) -> float | None:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()
        return now()

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule_now("k")
    async with running(scheduler):
        await started.wait()
        scheduler.schedule_now("k")
        scheduler.forget("k")
        release.set()
        await asyncio.sleep(0.1)
    assert runs == 1
    assert scheduler.due_time("k") is None


async def test_forget_before_due_time_never_runs() -> None:
    ran: list[Hashable] = []

    async def work(key: Hashable) -> float | None:
        ran.append(key)
        return None

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule("k", now() + 0.05)
    scheduler.forget("k")
    scheduler.schedule("other", now() + 0.1)
    async with running(scheduler):
        await wait_for(lambda: ran == ["other"])
        await asyncio.sleep(0.05)
    assert ran == ["other"]


async def test_failing_work_is_retried_later_and_loop_survives() -> None:
    calls: list[Hashable] = []

    async def work(key: Hashable) -> float | None:
        calls.append(key)
        if key == "bad":
            raise RuntimeError("bug")
        return None

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule_now("bad")
    async with running(scheduler):
        await wait_for(lambda: "bad" in calls)
        await wait_for(lambda: scheduler.due_time("bad") is not None)
        due = scheduler.due_time("bad")
        assert due is not None
        assert due - now() > 30  # later, not a hot loop
        scheduler.schedule_now("good")  # the loop still runs other work
        await wait_for(lambda: "good" in calls)
    assert calls.count("bad") == 1


async def test_fake_clock_drives_due_times() -> None:
    now = [1000.0]
    ran: list[Hashable] = []

    async def work(key: Hashable) -> float | None:
        ran.append(key)
        return None

    scheduler = Scheduler(work, concurrency=1, clock=lambda: now[0])
    scheduler.schedule("k", 1005.0)
    async with running(scheduler):
        await asyncio.sleep(0.05)
        assert ran == []
        now[0] = 1010.0
        scheduler.schedule_now("poke")  # wakes the loop, which sees the new clock
        await wait_for(lambda: set(ran) == {"k", "poke"})


async def test_drain_lets_runs_finish_and_starts_no_more() -> None:
    finished: list[Hashable] = []

    async def work(key: Hashable) -> float | None:
        await asyncio.sleep(5)
        finished.append(key)
        return None

    scheduler = Scheduler(work, concurrency=4, clock=now)
    scheduler.schedule_now("a")
    scheduler.schedule_now("b")
    scheduler.schedule("later", now() + 1)
    async with running(scheduler):
        await wait_for(lambda: scheduler.running == 2)
        cancelled = await scheduler.drain(grace=30)
        await asyncio.sleep(10)  # past "later"'s due time
    assert cancelled == 0
    assert sorted(map(str, finished)) == ["a", "b"]  # finished, and nothing else started


async def test_drain_cancels_runs_that_outlast_the_grace() -> None:
    outcome: list[str] = []

    async def work(key: Hashable) -> float | None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")
        return None

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule_now("slow")
    async with running(scheduler):
        await wait_for(lambda: scheduler.running == 1)
        started = now()
        cancelled = await scheduler.drain(grace=10)
        assert now() - started == pytest.approx(10, abs=0.1)
    assert (cancelled, outcome) == (1, ["cancelled"])


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
async def test_a_stop_as_the_loop_is_woken_ends_the_loop(steps: int) -> None:
    """The stop handler cancels the loop just after drain() returned, while the last run's
    end has just woken it. Python 3.11's asyncio.wait_for loses a cancellation that arrives
    as the awaited event is set, and the loop then slept forever: on a real node every
    rollout that landed on a refresh took the pod's whole 60 s grace period."""

    async def work(key: Hashable) -> float | None:
        return None

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule("later", now() + 100)  # the loop sleeps with a timeout
    loop_task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(1)
    assert await scheduler.drain(grace=30) == 0
    scheduler.schedule("woken", now() + 50)  # wakes the loop, as a finishing run does
    for _ in range(steps):
        await asyncio.sleep(0)
    loop_task.cancel()
    done, _ = await asyncio.wait({loop_task}, timeout=60)
    assert loop_task in done


async def test_paused_scheduler_starts_nothing_until_resumed() -> None:
    started: list[Hashable] = []

    async def work(key: Hashable) -> float | None:
        started.append(key)
        await asyncio.sleep(5)
        return None

    scheduler = Scheduler(work, concurrency=4, clock=now)
    scheduler.schedule_now("a")
    async with running(scheduler):
        await wait_for(lambda: scheduler.running == 1)
        scheduler.pause()
        scheduler.schedule_now("b")  # recorded, not started
        scheduler.schedule("c", now() + 1)
        await asyncio.sleep(10)
        assert started == ["a"] and scheduler.running == 0  # the run in progress finished
        scheduler.resume()
        await wait_for(lambda: len(started) == 3)
    assert sorted(map(str, started)) == ["a", "b", "c"]


async def test_forget_all_drops_due_and_running_keys() -> None:
    runs: list[Hashable] = []

    async def work(key: Hashable) -> float | None:
        runs.append(key)
        await asyncio.sleep(5)
        return now() + 1  # would run again in a second

    scheduler = Scheduler(work, concurrency=1, clock=now)
    scheduler.schedule_now("a")
    scheduler.schedule_now("b")
    async with running(scheduler):
        await wait_for(lambda: scheduler.running == 1)
        scheduler.forget_all()
        await asyncio.sleep(20)
    assert runs == ["a"] and len(scheduler) == 0


async def test_a_run_waiting_for_a_slot_is_reported_late_by_the_wait() -> None:
    # One slot, two keys due at once: the second starts only when the first ends, and the
    # delay it reports (what the run-start-delay metric shows users) is that wait.
    delays: list[float] = []

    async def work(key: Hashable) -> float | None:
        await asyncio.sleep(0.2)
        return None

    scheduler = Scheduler(work, concurrency=1, clock=now, started=delays.append)
    t0 = now()
    scheduler.schedule("first", t0)
    scheduler.schedule("second", t0)
    async with running(scheduler):
        await wait_for(lambda: len(delays) == 2)
    assert delays[0] < 0.1
    assert 0.2 <= delays[1] < 0.5
