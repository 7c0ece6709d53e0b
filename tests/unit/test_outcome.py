"""engine/outcome.py: what a run writes once it knows how it went, as tables."""

from __future__ import annotations

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.engine import outcome
from oauth_token_operator.engine.decide import Retry
from oauth_token_operator.oauth.types import OAuthError, Outcome, Token
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.wire import rfc3339
from tests.unit.test_spec import body

SPEC = parse(body())
T0 = 1_800_000_000.0


def test_a_token_in_place_says_until_when_and_the_next_refresh() -> None:
    token = Token("a", "Bearer", T0, T0 + 3600, scope="api")
    report = outcome.succeeded(SPEC, T0, T0 + 3600, T0 + 2400, token)
    assert (report.ready, report.reason) == (True, reasons.TOKEN_ISSUED)
    assert report.message == (
        f"token valid until {rfc3339(T0 + 3600)}, next refresh at {rfc3339(T0 + 2400)}"
    )
    assert report.fields["secretName"] == SPEC.output.name
    assert report.fields["tokenType"] == "Bearer"
    reused = outcome.succeeded(SPEC, T0, T0 + 3600, T0 + 2400, None)
    assert "tokenType" not in reused.fields


@pytest.mark.parametrize(
    ("error_reason", "output_exists", "had_token", "had_status", "secret_named", "advice"),
    [
        (reasons.INVALID_CLIENT, True, False, False, True, False),
        (reasons.INVALID_CLIENT, False, False, True, False, False),  # never written
        (reasons.INVALID_CLIENT, False, True, False, True, False),  # a token is recorded
        (reasons.KUBERNETES_ERROR, None, False, True, True, False),  # unknown: kept
        (reasons.KUBERNETES_ERROR, None, False, False, False, False),
        (reasons.INVALID_GRANT, True, True, True, True, True),  # login advice
    ],
)
def test_a_failure_says_why_and_names_the_secret_only_when_it_exists(
    error_reason: str,
    output_exists: bool | None,
    had_token: bool,
    had_status: bool,
    secret_named: bool,
    advice: bool,
) -> None:
    error = OAuthError(Outcome.NEEDS_HUMAN, error_reason, "no")
    # The retry may carry another reason (RefreshRetrying): advice follows the error's own.
    retry = Retry(T0 + 60, had_token, reasons.REFRESH_RETRYING, "refresh failed")
    report = outcome.failed(SPEC, error, retry, 3, output_exists, had_token, had_status, None)
    assert (report.ready, report.reason) == (had_token, reasons.REFRESH_RETRYING)
    assert ("secretName" in report.fields) is secret_named
    assert report.fields["consecutiveFailures"] == 3
    assert report.message.startswith("refresh failed")
    assert ("login" in report.message) is advice


def test_a_token_too_short_lived_to_renew_is_refused_with_its_lifetime() -> None:
    assert outcome.too_short_lived(Token("a", "Bearer", T0, T0 + 3600)) is None
    short = outcome.too_short_lived(Token("a", "Bearer", T0, T0 + 5))
    assert short is not None and short.reason == reasons.TOKEN_TOO_SHORT_LIVED
    assert "valid for 5s" in short.message
