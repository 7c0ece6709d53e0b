"""A provider's status as pure functions of what its check found: the Ready condition,
status.tokenEndpoint, when to check again, and when its failing clients retry."""

from __future__ import annotations

from random import Random

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.resource import provider_status
from oauth_token_operator.resource.provider_status import (
    Found,
    next_check,
    ready,
    recorded,
    status_patch,
)
from oauth_token_operator.resource.status import Condition
from oauth_token_operator.wire import rfc3339

ISSUER = "https://sso.example/realms/apps"
TOKEN = ISSUER + "/protocol/openid-connect/token"
NOW = 1_700_000_000.0
EARLIER = "2023-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("found", "status", "reason", "says"),
    [
        (
            Found(TOKEN, ISSUER),
            True,
            reasons.DISCOVERY_FETCHED,
            [f"discovery document of {ISSUER} fetched and its issuer matched", TOKEN],
        ),
        (
            Found(TOKEN),
            True,
            reasons.TOKEN_ENDPOINT_CONFIGURED,
            [f"token endpoint {TOKEN} (spec.tokenEndpoint) is used as given", "no discovery"],
        ),
        (
            Found("http://sso.sso.svc/token", "http://sso.sso.svc"),
            True,
            reasons.DISCOVERY_FETCHED,
            ["plain http: no client certificate, ServiceAccount or subject token is ever sent"],
        ),
        (
            Found(reason=reasons.TLS_VERIFICATION_FAILED, message="not trusted (x)"),
            False,
            reasons.TLS_VERIFICATION_FAILED,
            ["not trusted (x); OAuthClients that use this provider get no new token"],
        ),
        (
            Found(reason=reasons.PROVIDER_INVALID, message="spec.defaults.audience must be"),
            False,
            reasons.PROVIDER_INVALID,
            ["spec.defaults.audience must be"],
        ),
    ],
)
def test_ready_says_what_the_check_found(
    found: Found, status: bool, reason: str, says: list[str]
) -> None:
    is_ready, got_reason, message = ready(found)
    assert (is_ready, got_reason) == (status, reason)
    for text in says:
        assert text in message
    if not found.token_endpoint or found.token_endpoint.startswith("https://"):
        assert "plain http" not in message


@pytest.mark.parametrize(
    ("previous", "found", "transition"),
    [
        (None, Found(TOKEN, ISSUER), NOW),
        (
            Condition("True", reasons.DISCOVERY_FETCHED, "old", EARLIER, 1),
            Found(TOKEN, ISSUER),
            EARLIER,
        ),
        # Still failing, with another reason: the status did not flip.
        (
            Condition("False", reasons.DISCOVERY_FAILED, "x", EARLIER, 1),
            Found(reason=reasons.PROVIDER_UNREACHABLE, message="down"),
            EARLIER,
        ),
        (
            Condition("False", reasons.DISCOVERY_FAILED, "x", EARLIER, 1),
            Found(TOKEN, ISSUER),
            NOW,
        ),
        (
            Condition("True", reasons.DISCOVERY_FETCHED, "x", EARLIER, 1),
            Found(reason=reasons.DISCOVERY_FAILED, message="gone"),
            NOW,
        ),
    ],
)
def test_last_transition_time_moves_only_when_ready_flips(
    previous: Condition | None, found: Found, transition: float | str
) -> None:
    condition, patch = status_patch(previous, found, 3, NOW)
    expected = rfc3339(transition) if isinstance(transition, float) else transition
    assert condition.last_transition_time == expected
    assert patch == {
        "observedGeneration": 3,
        "tokenEndpoint": found.token_endpoint,
        "conditions": [condition.to_dict()],
    }
    assert condition.observed_generation == 3


def test_status_token_endpoint_is_removed_while_clients_cannot_use_it() -> None:
    _, failed = status_patch(None, Found(reason=reasons.DISCOVERY_FAILED, message="m"), 1, NOW)
    assert failed["tokenEndpoint"] is None  # a merge patch removes it
    assert failed["conditions"][0]["status"] == "False"


def test_a_status_written_before_is_recognised_so_a_restart_writes_nothing() -> None:
    condition, patch = status_patch(None, Found(TOKEN, ISSUER), 2, NOW)
    assert recorded(patch) == patch
    again = status_patch(condition, Found(TOKEN, ISSUER), 2, NOW + 600)[1]
    assert again == patch  # the same check an hour later: the same status, no write
    assert recorded(None) is None
    assert recorded({"observedGeneration": 1}) is None  # no condition: never written


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        (0, 270.0, 300.0),
        (1, 5.0, 10.0),
        (2, 10.0, 20.0),
        (4, 40.0, 80.0),
        (6, 150.0, 300.0),  # capped at the check interval
        (10_000, 150.0, 300.0),  # no overflow
    ],
)
def test_checks_come_every_few_minutes_and_sooner_after_failures(
    failures: int, low: float, high: float
) -> None:
    rng = Random(7)
    for _ in range(50):
        assert low <= next_check(failures, rng) <= high


@pytest.mark.parametrize(
    ("previous", "current", "recovered"),
    [
        (None, "True", False),  # first report: no client failed because of an old one
        ("False", "True", True),
        ("True", "True", False),
        ("True", "False", False),
        ("False", "False", False),
    ],
)
def test_failing_clients_retry_when_their_provider_works_again(
    previous: str | None, current: str, recovered: bool
) -> None:
    before = None if previous is None else Condition(previous, "R", "m")
    assert provider_status.recovered(before, Condition(current, "R", "m")) is recovered


def test_what_clients_fail_with_because_of_their_provider() -> None:
    assert provider_status.FIRST_SEEN <= provider_status.PROVIDER_FAILURES
    for reason in (reasons.INVALID_CLIENT, reasons.INVALID_GRANT, reasons.SECRET_NOT_OPTED_IN):
        assert reason not in provider_status.PROVIDER_FAILURES
