"""What a run says once it knows how it went, as pure functions returning what to write:
the Ready condition's status, reason and message and the status fields, for a token in
place and for a failure (cert-manager builds its Ready condition from its policy chain the
same way, apart from the write). engine/run.py writes what these return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.engine import decide, schedule
from oauth_token_operator.oauth.types import OAuthError, Outcome, Token
from oauth_token_operator.resource import status
from oauth_token_operator.resource.spec import OAuthClientSpec
from oauth_token_operator.wire import rfc3339


@dataclass(frozen=True)
class Report:
    ready: bool
    reason: str
    message: str
    fields: dict[str, Any]


def succeeded(
    spec: OAuthClientSpec, issued_at: float, expires_at: float, due: float, token: Token | None
) -> Report:
    """A token valid until `expires_at` is in place (`token`: just issued; None: reused)."""
    fields = status.success_fields(
        spec.output.name,
        issued_at,
        expires_at,
        due,
        token.token_type if token else None,
        token.scope if token else None,
    )
    message = f"token valid until {rfc3339(expires_at)}, next refresh at {rfc3339(due)}"
    return Report(True, reasons.TOKEN_ISSUED, message, fields)


def failed(
    spec: OAuthClientSpec,
    error: OAuthError,
    retry: decide.Retry,
    failures: int,
    output_exists: bool | None,
    had_token: bool,
    had_status: bool,
    grant_invalid_since: float | None,
) -> Report:
    """A failure and its retry. `output_exists` None: not known (the read failed)."""
    message = retry.message
    advice = status.advice_for(error.reason, spec.key.namespace, spec.credentials.secret_name)
    if advice:
        message = f"{message}; {advice}"
    secret_name = spec.output.name if output_exists or had_token else None
    if output_exists is None and had_status:
        secret_name = spec.output.name  # unknown: leave the column as it was
    fields = status.failure_fields(failures, retry.at, secret_name, grant_invalid_since)
    return Report(retry.ready, retry.reason, message, fields)


def too_short_lived(token: Token) -> OAuthError | None:
    """A token that would always be expired by the time the operator could renew it."""
    if not schedule.too_short_lived(token.issued_at, token.expires_at):
        return None
    return OAuthError(
        Outcome.NEEDS_HUMAN,
        reasons.TOKEN_TOO_SHORT_LIVED,
        f"the provider issued a token valid for "
        f"{max(token.expires_at - token.issued_at, 0):.0f}s (expires_in, or the JWT exp "
        f"claim); the operator exchanges at most every "
        f"{schedule.MIN_EXCHANGE_INTERVAL:.0f}s per client, so it would always be "
        "expired: fix the provider's token lifetime or clock (or, for opaque tokens "
        "without expires_in, spec.refresh.defaultLifetime)",
    )
