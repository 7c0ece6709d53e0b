"""The OAuthClient status: one Ready condition following the Kubernetes API conventions
(so `kubectl wait --for=condition=Ready` works) plus token times. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.wire import parse_rfc3339, rfc3339

READY = "Ready"


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: str = ""
    observed_generation: int = 0

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> Condition | None:
        for item in (status or {}).get("conditions") or []:
            if item.get("type") == READY:
                return cls(
                    status=str(item.get("status", "Unknown")),
                    reason=str(item.get("reason", "")),
                    message=str(item.get("message", "")),
                    last_transition_time=str(item.get("lastTransitionTime", "")),
                    observed_generation=int(item.get("observedGeneration") or 0),
                )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": READY,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedGeneration": self.observed_generation,
        }


@dataclass(frozen=True)
class Resumed:
    """What an earlier process recorded in status, for a restart to carry on from instead
    of starting over: a failing client waits for its recorded retry with its failure count,
    a healthy one keeps its recorded refresh time (so status stays true without a write)."""

    generation: int  # the spec generation the status was written for
    failures: int
    next_refresh: float | None
    expires_at: float | None

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> Resumed | None:
        status = status or {}
        condition = Condition.from_status(status)
        if condition is None:
            return None
        try:
            failures = max(int(status.get("consecutiveFailures") or 0), 0)
        except (TypeError, ValueError):
            failures = 0
        return cls(
            condition.observed_generation,
            failures,
            parse_rfc3339(status.get("nextRefreshTime")),
            parse_rfc3339(status.get("expiresAt")),
        )


def next_condition(
    previous: Condition | None,
    ready: bool,
    reason: str,
    message: str,
    generation: int,
    now: float,
) -> Condition:
    """The new Ready condition; lastTransitionTime moves only when the status flips."""
    status = "True" if ready else "False"
    condition = Condition(status, reason, message, rfc3339(now), generation)
    if previous is not None and previous.status == status and previous.last_transition_time:
        condition = replace(condition, last_transition_time=previous.last_transition_time)
    return condition


def is_news(previous: Condition | None, current: Condition) -> bool:
    """Whether a change deserves an Event: a new status or a new reason, not a repeat, and
    not a new client's first token (Ready=True in its status says it; at 10,000 new clients
    an Event each was a quarter of the operator's API calls). A first failure is news, and
    so is a token after failures."""
    if previous is None:
        return current.status != "True"
    return (previous.status, previous.reason) != (current.status, current.reason)


def success_fields(
    secret_name: str,
    issued_at: float,
    expires_at: float,
    due: float,
    token_type: str | None = None,
    scope: str | None = None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "secretName": secret_name,
        "expiresAt": rfc3339(expires_at),
        "lastRefreshTime": rfc3339(issued_at),
        "nextRefreshTime": rfc3339(due),
        "consecutiveFailures": 0,
        "grantInvalidSince": None,  # merge patch: removes it
    }
    if token_type is not None:
        fields["tokenType"] = token_type
        fields["scope"] = scope
    return fields


def failure_fields(
    failures: int, retry_at: float, secret_name: str | None, grant_invalid_since: float | None
) -> dict[str, Any]:
    """`secret_name` only when the output Secret exists: the SECRET column must not name a
    Secret that a failed first run never wrote."""
    fields: dict[str, Any] = {
        "consecutiveFailures": failures,
        "nextRefreshTime": rfc3339(retry_at),
    }
    if secret_name is not None:
        fields["secretName"] = secret_name
    if grant_invalid_since is not None:
        fields["grantInvalidSince"] = rfc3339(grant_invalid_since)
    return fields


def login_advice(namespace: str, credentials_secret: str) -> str:
    """What a person does about a dead grant."""
    return (
        "the grant is no longer valid and refreshing cannot revive it; obtain a new refresh "
        f"token with `oauth-token-operator login --issuer ISSUER --client-id CLIENT_ID "
        f"-n {namespace} --secret {credentials_secret}` (add --scope offline_access and the "
        "options the client needs); the operator retries at once when the Secret changes"
    )


def advice_for(reason: str, namespace: str, credentials_secret: str) -> str | None:
    if reason == reasons.INVALID_GRANT:
        return login_advice(namespace, credentials_secret)
    if reason == reasons.EXCHANGE_OUTCOME_UNKNOWN:
        return (
            "the refresh request may have reached the provider without its answer coming "
            "back; the next refresh uses the same refresh token (the only one there is); if "
            "the provider rotated it, that refresh fails with invalid_grant and a new login "
            "is needed"
        )
    return None
