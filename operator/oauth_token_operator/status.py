"""The OAuthClient status: one Ready condition following the Kubernetes API conventions
(so `kubectl wait --for=condition=Ready` works) plus token times. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .kube import rfc3339

READY = "Ready"

# Reasons for Ready=True.
TOKEN_ISSUED = "TokenIssued"
REFRESH_RETRYING = "RefreshRetrying"  # last refresh failed, but the token in place is valid
# Ready=False reasons come from OAuthError.reason, plus these.
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_OWNED = "SecretNotOwned"
CREDENTIALS_NOT_FOUND = "CredentialsNotFound"
KUBERNETES_ERROR = "KubernetesError"


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
    """Whether a change deserves an Event: a new status or a new reason, not a repeat."""
    return previous is None or (previous.status, previous.reason) != (
        current.status,
        current.reason,
    )
