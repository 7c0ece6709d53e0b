"""What a run should do, as pure functions of what it gathered: keep the token in place
until a due time, exchange now, or fail with a reason; and, after a failure, when to try
again and whether the client is still Ready. No I/O, no clock, no randomness of their own."""

from __future__ import annotations

import random
from dataclasses import dataclass

from oauth_token_operator import reasons
from oauth_token_operator.engine import schedule
from oauth_token_operator.oauth.types import OAuthError, Outcome
from oauth_token_operator.resource.secret_bodies import RecordedToken
from oauth_token_operator.resource.spec import OAuthClientSpec
from oauth_token_operator.resource.status import Resumed
from oauth_token_operator.wire import rfc3339


@dataclass(frozen=True)
class Reuse:
    """The token in the output Secret stays; the next run is at `due`."""

    due: float


@dataclass(frozen=True)
class Exchange:
    """Exchange at the provider now."""


@dataclass(frozen=True)
class Fail:
    error: OAuthError


Decision = Reuse | Exchange | Fail


@dataclass(frozen=True)
class Gathered:
    """What a run read before deciding. `inputs_error` is why the credentials (or the CA
    bundle) could not be used; `owned` is False when the output Secret exists but is not
    ours."""

    recorded: RecordedToken | None
    owned: bool = True
    inputs_error: OAuthError | None = None


def decide(
    spec: OAuthClientSpec,
    gathered: Gathered,
    *,
    force: bool,
    planned_due: float | None,
    now: float,
) -> Decision:
    """`planned_due` is the refresh time drawn for the recorded token (None if none)."""
    if not gathered.owned:
        return Fail(
            OAuthError(
                Outcome.NEEDS_HUMAN,
                reasons.SECRET_NOT_OWNED,
                f"Secret {spec.output.name} exists and is not owned by this OAuthClient; "
                "the operator will not overwrite it (delete it or choose spec.secret.name)",
            )
        )
    if gathered.inputs_error is not None:
        return Fail(gathered.inputs_error)
    recorded = gathered.recorded
    if (
        force
        or recorded is None
        or recorded.spec_hash != spec.spec_hash
        or planned_due is None
        or planned_due <= now
    ):
        return Exchange()
    return Reuse(planned_due)


@dataclass(frozen=True)
class Retry:
    """After a failure: when to run again, whether the client stays Ready, and the reason
    and message the status shows."""

    at: float
    ready: bool
    reason: str
    message: str


def retry_after_failure(
    error: OAuthError,
    failures: int,
    recorded: RecordedToken | None,
    now: float,
    propagation_margin: float,
    rng: random.Random,
) -> Retry:
    """Backoff with jitter, honouring Retry-After; but a token in place that would expire
    before the retry is replaced in time: expiry beats a long Retry-After or backoff."""
    needs_human = error.outcome is Outcome.NEEDS_HUMAN
    delay = schedule.retry_delay(failures, error.retry_after, needs_human, rng)
    if error.reason == reasons.REFRESH_TOKEN_NOT_PERSISTED:
        # The token in hand must be durable before its claim expires and someone else takes
        # the Secret's older token: retry within seconds however long the outage lasts.
        delay = min(delay, rng.uniform(schedule.HELD_TOKEN_RETRY / 2, schedule.HELD_TOKEN_RETRY))
    valid = recorded is not None and recorded.expires_at > now
    ready = valid and not needs_human
    reason, message = error.reason, error.message
    if ready:
        assert recorded is not None
        # Try again before the token in place stops working (and before kubelet needs its
        # replacement): expiry beats a long Retry-After or backoff; a short one still holds.
        latest = max(recorded.expires_at - propagation_margin - now, schedule.BACKOFF_BASE)
        if delay > latest:
            delay = latest
            message = f"{message} (retrying early: the token in place expires first)"
        if reason not in _KEEPS_OWN_REASON:
            valid_until = rfc3339(recorded.expires_at)
            message = f"token valid until {valid_until}; refresh failed: {reason}: {message}"
            reason = reasons.REFRESH_RETRYING
    return Retry(now + delay, ready, reason, message)


# Reasons a person should see as such even while the token in place is still valid.
_KEEPS_OWN_REASON = frozenset(
    {reasons.EXCHANGE_OUTCOME_UNKNOWN, reasons.REFRESH_TOKEN_NOT_PERSISTED}
)


def resumed_retry(
    resumed: Resumed | None, generation: int, *, force: bool, now: float
) -> float | None:
    """After a restart, a client that was failing waits for the retry the earlier process
    recorded (status.nextRefreshTime), instead of retrying at once: a restart must not turn
    many failing clients into a burst at the provider, nor send a revoked refresh token again
    early. None: act now (not failing, the spec changed meanwhile, a trigger, or due)."""
    if resumed is None or resumed.failures == 0 or force or resumed.generation != generation:
        return None
    if resumed.next_refresh is None or resumed.next_refresh <= now:
        return None
    # Never longer than any retry would wait: a status from a skewed clock (or written by
    # whoever may patch status) must not park a client for days.
    return min(resumed.next_refresh, now + schedule.HUMAN_RETRY_CAP)


def resumed_plan(
    resumed: Resumed | None, generation: int, expires_at: float, propagation_margin: float
) -> float | None:
    """After a restart, the refresh time the earlier process drew for this very token, so
    that status.nextRefreshTime stays true without a status write; None: draw anew."""
    if resumed is None or resumed.failures or resumed.generation != generation:
        return None
    if resumed.expires_at is None or int(resumed.expires_at) != int(expires_at):
        return None
    if resumed.next_refresh is None or resumed.next_refresh > expires_at - propagation_margin:
        return None
    return resumed.next_refresh


def api_failure(spec: OAuthClientSpec, message: str, holding_refresh_token: bool) -> OAuthError:
    """A Kubernetes API failure (or, with no message, a rotated refresh token that could not
    be written) as a run's error. While a rotated refresh token is held in memory, that is
    the news: the status says so, and the retry comes within seconds."""
    if not holding_refresh_token:
        return OAuthError(Outcome.TRANSIENT, reasons.KUBERNETES_ERROR, message)
    why = f" ({message})" if message else ""
    return OAuthError(
        Outcome.TRANSIENT,
        reasons.REFRESH_TOKEN_NOT_PERSISTED,
        "the rotated refresh token could not be written to Secret "
        f"{spec.credentials.secret_name} yet{why}; it is kept in memory and retried within "
        "seconds (the old one is never sent again)",
    )
