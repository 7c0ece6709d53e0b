"""The OAuth protocol as pure functions: the token request's form and client
authentication, the token response and error answers parsed and bounded, Retry-After, and
redaction. No I/O; oauth/client.py sends what these build."""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import math
import time
import uuid
from typing import Any
from urllib.parse import quote, quote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from oauth_token_operator import reasons
from oauth_token_operator.oauth.types import (
    ClientAuth,
    Credentials,
    GrantType,
    OAuthError,
    Outcome,
    Token,
    TokenRequest,
)

# Bounds on what a provider can make the operator do or store (README: "Bounds").
MAX_RESPONSE_BYTES = 256 * 1024
MAX_LIFETIME = 366 * 86400.0  # a longer lifetime is held to this: refreshed yearly
# Beyond this a lifetime (or a JWT exp) is not a long-lived token but a broken answer.
ABSURD_SECONDS = 100 * 366 * 86400.0
MAX_TOKEN_TYPE = 64
MAX_SCOPE = 4096
MAX_PROVIDER_TEXT = 200  # error descriptions and other provider text shown to users


# OAuth `error` values (RFC 6749 5.2, RFC 8707) and what they mean for us.
_ERRORS: dict[str, tuple[Outcome, str]] = {
    "invalid_client": (Outcome.NEEDS_HUMAN, reasons.INVALID_CLIENT),
    "invalid_grant": (Outcome.NEEDS_HUMAN, reasons.INVALID_GRANT),
    "unauthorized_client": (Outcome.NEEDS_HUMAN, reasons.UNAUTHORIZED_CLIENT),
    "unsupported_grant_type": (Outcome.NEEDS_HUMAN, reasons.UNSUPPORTED_GRANT_TYPE),
    "invalid_scope": (Outcome.NEEDS_HUMAN, reasons.INVALID_SCOPE),
    "invalid_target": (Outcome.NEEDS_HUMAN, reasons.INVALID_TARGET),
    "invalid_request": (Outcome.NEEDS_HUMAN, reasons.INVALID_REQUEST),
    "temporarily_unavailable": (Outcome.TRANSIENT, reasons.PROVIDER_UNAVAILABLE),
    "server_error": (Outcome.TRANSIENT, reasons.PROVIDER_UNAVAILABLE),
    "slow_down": (Outcome.TRANSIENT, reasons.RATE_LIMITED),
}


def printable(text: str, limit: int = MAX_PROVIDER_TEXT) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:limit] + ("…" if len(cleaned) > limit else "")


def redact(text: str, secrets: tuple[str | None, ...]) -> str:
    """Provider text is untrusted: a provider may echo what it was sent. Every known secret
    value of the client (as sent, and form-encoded) is cut out before the text goes to a
    status, an Event or a log line."""
    for value in secrets:
        if value and len(value) >= 4:
            for form in {value, quote(value, safe=""), quote_plus(value)}:
                text = text.replace(form, "[redacted]")
    return text


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def map_error_response(status: int, body: bytes, retry_after: float | None) -> OAuthError:
    """Turns a non-2xx token endpoint answer into an OAuthError."""
    code, description = None, None
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            code = payload["error"]
            if isinstance(payload.get("error_description"), str):
                description = payload["error_description"]
    except ValueError:
        pass
    detail = f" ({printable(description)})" if description else ""
    if status == 429:
        return OAuthError(
            Outcome.TRANSIENT,
            reasons.RATE_LIMITED,
            f"token endpoint answered 429 Too Many Requests{detail}",
            retry_after,
        )
    if status >= 500:
        return OAuthError(
            Outcome.TRANSIENT,
            reasons.PROVIDER_UNAVAILABLE,
            f"token endpoint answered HTTP {status}{detail}",
            retry_after,
        )
    if code is None:
        return OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.PROVIDER_REJECTED,
            f"token endpoint answered HTTP {status} without an OAuth error",
            retry_after,
        )
    outcome, reason = _ERRORS.get(code, (Outcome.NEEDS_HUMAN, reasons.PROVIDER_REJECTED))
    return OAuthError(
        outcome,
        reason,
        f"token endpoint answered {printable(code, 64)}{detail} (HTTP {status})",
        retry_after,
    )


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, read without verifying: the operator is not the token's
    audience, it only needs to know when to refresh (and `token` shows them for debugging)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _bounded_number(value: Any, low: float, high: float) -> float | None:
    """A JSON number within [low, high] as a float; None for anything else. Compared before
    any conversion: a 400-digit integer does not fit a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not low <= value <= high:
        return None
    return float(value)


def jwt_expiry(token: str) -> float | None:
    """The exp claim of a JWT access token, if it is one and a plausible time."""
    exp = (jwt_claims(token) or {}).get("exp")
    return _bounded_number(exp, 0.0, time.time() + ABSURD_SECONDS)


def parse_token_response(body: bytes, issued_at: float, default_lifetime: float) -> Token:
    """Validates a successful token response (RFC 6749 5.1) and works out its expiry:
    expires_in, else the JWT exp claim, else the configured default lifetime. Every field is
    checked before use; a broken answer is MalformedResponse, carrying a rotated refresh
    token if the answer had a usable one."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise _malformed("is not JSON") from None
    if not isinstance(payload, dict):
        raise _malformed("is not a JSON object")
    rotated = payload.get("refresh_token")
    rotated = rotated if isinstance(rotated, str) and rotated else None

    def malformed(why: str) -> OAuthError:
        return _malformed(why, rotated)

    access_token = payload.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise malformed("has no access_token")
    token_type = payload.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not 0 < len(token_type) <= MAX_TOKEN_TYPE:
        raise malformed("has an invalid token_type")
    for name in ("refresh_token", "id_token", "scope"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            raise malformed(f"has a non-string {name}")
    if len(payload.get("scope") or "") > MAX_SCOPE:
        raise malformed(f"has a scope longer than {MAX_SCOPE} characters")

    expires_in = payload.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isascii() and expires_in.isdigit():
        expires_in = int(expires_in[:20])  # some providers send a string; 20 digits is plenty
    if expires_in is not None:
        lifetime = _bounded_number(expires_in, 0.0, ABSURD_SECONDS)
        if lifetime is None or lifetime <= 0:
            raise malformed("has an invalid expires_in")
        expires_at = issued_at + lifetime
    else:
        expires_at = jwt_expiry(access_token) or issued_at + default_lifetime
    # A very long lifetime (or a JWT exp decades away) is held to a year: the token is then
    # refreshed yearly rather than never, and times stay representable.
    expires_at = min(expires_at, issued_at + MAX_LIFETIME)
    return Token(
        access_token=access_token,
        token_type=token_type,
        issued_at=issued_at,
        expires_at=expires_at,
        scope=payload.get("scope"),
        refresh_token=rotated,
        id_token=payload.get("id_token") or None,
    )


def _malformed(why: str, rotated_refresh_token: str | None = None) -> OAuthError:
    return OAuthError(
        Outcome.TRANSIENT,
        reasons.MALFORMED_RESPONSE,
        f"token response {why}",
        rotated_refresh_token=rotated_refresh_token,
    )


def build_form(
    request: TokenRequest, creds: Credentials, token_endpoint: str, now: float
) -> tuple[dict[str, str | list[str]], dict[str, str]]:
    """The form fields and headers of a token request."""
    form: dict[str, str | list[str]] = dict(request.extra_params)
    form["grant_type"] = request.grant_type.wire
    if request.grant_type is GrantType.REFRESH_TOKEN:
        if not creds.refresh_token:
            raise OAuthError(Outcome.NEEDS_HUMAN, reasons.CREDENTIALS_INVALID, "no refresh token")
        form["refresh_token"] = creds.refresh_token
    elif request.grant_type is GrantType.TOKEN_EXCHANGE:
        if not creds.subject_token or not request.subject_token_type:
            raise OAuthError(Outcome.NEEDS_HUMAN, reasons.CREDENTIALS_INVALID, "no subject token")
        form["subject_token"] = creds.subject_token
        form["subject_token_type"] = request.subject_token_type
        if request.requested_token_type:
            form["requested_token_type"] = request.requested_token_type
    if request.scopes:
        form["scope"] = " ".join(request.scopes)
    if request.audience:
        form["audience"] = request.audience
    if request.resources:
        form["resource"] = list(request.resources)
    auth_form, headers = client_authentication(request.client_auth, creds, token_endpoint, now)
    form.update(auth_form)
    return form, headers


def client_authentication(
    auth: ClientAuth, creds: Credentials, token_endpoint: str, now: float
) -> tuple[dict[str, str], dict[str, str]]:
    """The form fields and headers that authenticate the client (RFC 6749 2.3, RFC 7523)."""
    headers = {"Accept": "application/json"}
    if auth in (ClientAuth.BASIC, ClientAuth.POST) and not creds.client_secret:
        raise OAuthError(Outcome.NEEDS_HUMAN, reasons.CREDENTIALS_INVALID, "no client secret")
    if auth is ClientAuth.BASIC:
        # RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
        assert creds.client_secret is not None
        pair = f"{quote(creds.client_id, safe='')}:{quote(creds.client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return {}, headers
    form = {"client_id": creds.client_id}
    if auth is ClientAuth.POST:
        assert creds.client_secret is not None
        form["client_secret"] = creds.client_secret
    elif auth is ClientAuth.PRIVATE_KEY_JWT:
        form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        form["client_assertion"] = client_assertion(creds, token_endpoint, now)
    elif auth is ClientAuth.SERVICE_ACCOUNT_TOKEN:
        if not creds.client_assertion:
            raise OAuthError(
                Outcome.TRANSIENT, reasons.SERVICE_ACCOUNT_TOKEN_FAILED, "no ServiceAccount token"
            )
        form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        form["client_assertion"] = creds.client_assertion
    return form, headers


def client_assertion(creds: Credentials, audience: str, now: float) -> str:
    """An RFC 7523 client assertion signed with the client's private key."""
    if not creds.private_key:
        raise OAuthError(Outcome.NEEDS_HUMAN, reasons.CREDENTIALS_INVALID, "no private key")
    try:
        key = serialization.load_pem_private_key(creds.private_key.encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        algorithm = "ES256"
    else:
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.CREDENTIALS_INVALID,
            "private key is not an unencrypted PEM RSA or EC P-256 key",
        )
    claims = {
        "iss": creds.client_id,
        "sub": creds.client_id,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "iat": int(now),
        "exp": int(now) + 120,
    }
    return jwt.encode(claims, key, algorithm=algorithm)
