"""The run's decision and the retry plan, as tables: pure functions, no world to build."""

from __future__ import annotations

import random

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.engine import schedule
from oauth_token_operator.engine.decide import (
    Exchange,
    Fail,
    Gathered,
    Reuse,
    decide,
    retry_after_failure,
)
from oauth_token_operator.oauth.types import OAuthError, Outcome
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.secret_bodies import RecordedToken

NOW = 1_700_000_000.0
SPEC = parse(
    {
        "metadata": {"namespace": "ns", "name": "app", "uid": "u1", "generation": 1},
        "spec": {"tokenEndpoint": "https://idp/token", "credentialsSecretRef": {"name": "c"}},
    }
)
VALID = RecordedToken(NOW - 600, NOW + 3000, SPEC.spec_hash)
OTHER_SPEC = RecordedToken(NOW - 600, NOW + 3000, "another-hash")
TRANSIENT = OAuthError(Outcome.TRANSIENT, reasons.PROVIDER_UNAVAILABLE, "HTTP 503")
HUMAN = OAuthError(Outcome.NEEDS_HUMAN, reasons.INVALID_CLIENT, "invalid_client")


@pytest.mark.parametrize(
    ("gathered", "force", "planned", "expected"),
    [
        # A valid token recorded for this spec, not yet due: keep it (restarts cost nothing).
        (Gathered(VALID), False, NOW + 100, Reuse(NOW + 100)),
        # Due, forced (credentials changed after a failure), no token, another spec: exchange.
        (Gathered(VALID), False, NOW, Exchange()),
        (Gathered(VALID), True, NOW + 100, Exchange()),
        (Gathered(None), False, None, Exchange()),
        (Gathered(OTHER_SPEC), False, NOW + 100, Exchange()),
        # Someone else's Secret, or unusable credentials: fail with that reason.
        (Gathered(None, owned=False), False, None, Fail),
        (Gathered(VALID, inputs_error=HUMAN), False, NOW + 100, Fail),
    ],
)
def test_decide(gathered: Gathered, force: bool, planned: float | None, expected: object) -> None:
    decision = decide(SPEC, gathered, force=force, planned_due=planned, now=NOW)
    if expected is Fail:
        assert isinstance(decision, Fail)
    else:
        assert decision == expected


def test_not_owned_names_the_secret_and_the_way_out() -> None:
    decision = decide(SPEC, Gathered(None, owned=False), force=False, planned_due=None, now=NOW)
    assert isinstance(decision, Fail)
    assert decision.error.reason == reasons.SECRET_NOT_OWNED
    assert "app-token" in decision.error.message


@pytest.mark.parametrize(
    ("error", "recorded", "ready", "reason"),
    [
        (TRANSIENT, VALID, True, reasons.REFRESH_RETRYING),  # the token in place still works
        (TRANSIENT, None, False, reasons.PROVIDER_UNAVAILABLE),
        (HUMAN, VALID, False, reasons.INVALID_CLIENT),  # a person must act: say so now
        (
            OAuthError(Outcome.TRANSIENT, reasons.EXCHANGE_OUTCOME_UNKNOWN, "no answer"),
            VALID,
            True,
            reasons.EXCHANGE_OUTCOME_UNKNOWN,  # never hidden behind RefreshRetrying
        ),
    ],
)
def test_retry_readiness_and_reason(
    error: OAuthError, recorded: RecordedToken | None, ready: bool, reason: str
) -> None:
    retry = retry_after_failure(error, 1, recorded, NOW, 90.0, random.Random(1))
    assert (retry.ready, retry.reason) == (ready, reason)
    assert retry.at > NOW


def test_expiry_beats_a_long_retry_after() -> None:
    """A Retry-After of an hour must not let a token that expires in ten minutes lapse."""
    recorded = RecordedToken(NOW - 3000, NOW + 600, SPEC.spec_hash)
    error = OAuthError(Outcome.TRANSIENT, reasons.RATE_LIMITED, "429", retry_after=3600)
    retry = retry_after_failure(error, 1, recorded, NOW, 90.0, random.Random(1))
    assert retry.at <= recorded.expires_at - 90.0
    assert "expires first" in retry.message
    assert retry.ready


def test_a_short_retry_after_is_still_honoured() -> None:
    recorded = RecordedToken(NOW - 3000, NOW + 600, SPEC.spec_hash)
    error = OAuthError(Outcome.TRANSIENT, reasons.RATE_LIMITED, "429", retry_after=120)
    retry = retry_after_failure(error, 1, recorded, NOW, 90.0, random.Random(1))
    assert retry.at >= NOW + 120
    assert "expires first" not in retry.message


def test_retry_is_never_hot_even_inside_the_margin() -> None:
    recorded = RecordedToken(NOW - 3000, NOW + 30, SPEC.spec_hash)  # inside the 90 s margin
    retry = retry_after_failure(TRANSIENT, 1, recorded, NOW, 90.0, random.Random(1))
    assert retry.at >= NOW + schedule.BACKOFF_BASE / 2
