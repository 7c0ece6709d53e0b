"""A provider's status (ClusterOAuthProvider, OAuthProvider): what one check found, as the
Ready condition and status fields, when to check again, and which of its OAuthClients a
change of it concerns. Pure functions; app/provider_watch.py does the I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.resource import status

# A provider that works is checked again this often (its discovery document is fetched
# afresh, which also renews its clients' cached copy).
CHECK_INTERVAL = 300.0
# One that does not: sooner, with a capped exponential backoff.
RETRY_BASE = 10.0
RETRY_CAP = CHECK_INTERVAL
# What an OAuthClient fails with when its provider is to blame: a provider that comes back,
# or whose CA bundle Secret changes, runs the clients failing so at once.
PROVIDER_FAILURES = frozenset(
    {
        reasons.PROVIDER_NOT_FOUND,
        reasons.PROVIDER_INVALID,
        reasons.DISCOVERY_FAILED,
        reasons.TLS_VERIFICATION_FAILED,
        reasons.INVALID_CA_BUNDLE,
        reasons.ENDPOINT_NOT_ALLOWED,
        reasons.PROVIDER_UNREACHABLE,
        reasons.PROVIDER_UNAVAILABLE,
        reasons.EXCHANGE_DEADLINE_EXCEEDED,
        reasons.KUBERNETES_ERROR,
    }
)
# A provider seen for the first time (created, or listed at start) helps only the clients
# that could not find it; the others are run by their own events.
FIRST_SEEN = frozenset({reasons.PROVIDER_NOT_FOUND})


@dataclass(frozen=True)
class Found:
    """What a check found: the token endpoint clients would use (None: they cannot), or the
    reason and message they would get."""

    token_endpoint: str | None = None
    issuer: str | None = None  # set: the endpoint came from its discovery document
    reason: str = ""
    message: str = ""


def ready(found: Found) -> tuple[bool, str, str]:
    """Ready's status, reason and message for a person (no secret is ever part of it: the
    check sends none, and provider text arrives truncated and printable)."""
    url = found.token_endpoint
    if url is None:
        return (
            False,
            found.reason,
            f"{found.message}; OAuthClients that use this provider get no new token while "
            "this lasts",
        )
    plain = (
        "; it is plain http: no client certificate, ServiceAccount or subject token is ever "
        "sent to it"
        if url.startswith("http://")
        else ""
    )
    if found.issuer is not None:
        return (
            True,
            reasons.DISCOVERY_FETCHED,
            f"discovery document of {found.issuer} fetched and its issuer matched; token "
            f"endpoint {url}{plain}",
        )
    return (
        True,
        reasons.TOKEN_ENDPOINT_CONFIGURED,
        f"token endpoint {url} (spec.tokenEndpoint) is used as given: there is no discovery "
        "document to check, and the operator does not call the endpoint before a client asks "
        f"for a token{plain}",
    )


def status_patch(
    previous: status.Condition | None, found: Found, generation: int, now: float
) -> tuple[status.Condition, dict[str, Any]]:
    """The Ready condition (lastTransitionTime moves only when the status flips) and the
    status to write. status.tokenEndpoint names only an endpoint clients can use now."""
    is_ready, reason, message = ready(found)
    condition = status.next_condition(previous, is_ready, reason, message, generation, now)
    return condition, {
        "observedGeneration": generation,
        "tokenEndpoint": found.token_endpoint,  # None: removed (merge patch)
        "conditions": [condition.to_dict()],
    }


def recorded(observed: dict[str, Any] | None) -> dict[str, Any] | None:
    """A provider's status as status_patch would have written it (None: none written), to
    tell whether a new one differs."""
    condition = status.Condition.from_status(observed)
    if observed is None or condition is None:
        return None
    return {
        "observedGeneration": observed.get("observedGeneration"),
        "tokenEndpoint": observed.get("tokenEndpoint"),
        "conditions": [condition.to_dict()],
    }


def next_check(failures: int, rng: random.Random) -> float:
    """Seconds until the next check after `failures` failed ones in a row (0: it works)."""
    if failures <= 0:
        return rng.uniform(CHECK_INTERVAL * 0.9, CHECK_INTERVAL)
    delay = min(RETRY_CAP, RETRY_BASE * 2 ** min(failures - 1, 32))
    return rng.uniform(delay / 2, delay)


def recovered(previous: status.Condition | None, current: status.Condition) -> bool:
    """Whether the provider works again after it did not: its failing clients retry now."""
    return previous is not None and previous.status == "False" and current.status == "True"
