"""The OAuth vocabulary: what is asked of a provider (grant, client authentication,
endpoint, request), what comes back (a token, or an error and what to do about it) and the
credentials sent. Plain values, no I/O: every layer may import them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class GrantType(StrEnum):
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"
    TOKEN_EXCHANGE = "token_exchange"  # RFC 8693

    @property
    def wire(self) -> str:
        """The grant_type parameter."""
        if self is GrantType.TOKEN_EXCHANGE:
            return "urn:ietf:params:oauth:grant-type:token-exchange"
        return self.value


ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class ClientAuth(StrEnum):
    BASIC = "client_secret_basic"
    POST = "client_secret_post"
    PRIVATE_KEY_JWT = "private_key_jwt"
    # RFC 8705: the client certificate authenticates (PKI-issued, or registered self-signed).
    TLS_CLIENT_AUTH = "tls_client_auth"
    SELF_SIGNED_TLS_CLIENT_AUTH = "self_signed_tls_client_auth"
    # RFC 7523 with a Kubernetes ServiceAccount token as the client assertion: no secret.
    SERVICE_ACCOUNT_TOKEN = "service_account_token"
    NONE = "none"

    @property
    def mutual_tls(self) -> bool:
        return self in (ClientAuth.TLS_CLIENT_AUTH, ClientAuth.SELF_SIGNED_TLS_CLIENT_AUTH)


CLUSTER_PROVIDER_KIND = "ClusterOAuthProvider"
PROVIDER_KIND = "OAuthProvider"


@dataclass(frozen=True)
class Endpoint:
    """Where to find the token endpoint: by discovery from an issuer, or given directly, or
    (provider) the name of a ClusterOAuthProvider or (provider_kind OAuthProvider) of an
    OAuthProvider of the client's namespace, resolved into one of those by exchange/providers.py."""

    issuer: str | None = None
    token_endpoint: str | None = None
    provider: str | None = None
    # Not in the repr (so not in spec_hash): the resolved URLs are, and stay the same
    # whichever kind of provider named them.
    provider_kind: str = field(default=CLUSTER_PROVIDER_KIND, repr=False)
    # An OAuthProvider's namespace (None for a ClusterOAuthProvider, and before
    # exchange/providers.py resolved the reference): with kind and name, the provider's
    # identity (its discovery cache entry). Not in the repr either.
    provider_namespace: str | None = field(default=None, repr=False)

    @property
    def provider_ref(self) -> str:
        """How a message names the provider: ClusterOAuthProvider sso, OAuthProvider sso."""
        return f"{self.provider_kind} {self.provider}"


@dataclass(frozen=True)
class TokenRequest:
    """What to ask the provider for; knows nothing of Kubernetes."""

    endpoint: Endpoint
    grant_type: GrantType
    client_auth: ClientAuth
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    resources: tuple[str, ...] = ()
    extra_params: tuple[tuple[str, str], ...] = ()
    # RFC 8693 (grant token_exchange): the subject token's type, the type asked for.
    subject_token_type: str | None = None
    requested_token_type: str | None = None


class Outcome(StrEnum):
    """What the operator should do about a failed exchange."""

    TRANSIENT = "transient"  # retry with backoff; the last good token stays in place
    NEEDS_HUMAN = "needs_human"  # retry slowly; a change to spec or credentials retries at once


class OAuthError(Exception):
    """A failed exchange. `reason` is a CamelCase word for status conditions and Events."""

    def __init__(
        self,
        outcome: Outcome,
        reason: str,
        message: str,
        retry_after: float | None = None,
        rotated_refresh_token: str | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        # A 200 answer that could not be used may still carry a rotated refresh token: the
        # provider has rotated, so it must be kept. Never part of the message.
        self.rotated_refresh_token = rotated_refresh_token


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    # The client certificate (PEM) and its key, presented in the TLS handshake (RFC 8705).
    client_certificate: str | None = field(default=None, repr=False)
    client_key: str | None = field(default=None, repr=False)
    # A ServiceAccount token minted for this one request (never stored).
    client_assertion: str | None = field(default=None, repr=False)
    # The RFC 8693 subject token (grant token_exchange).
    subject_token: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str | None, ...]:
        """The values that must never appear in a message."""
        return (
            self.client_secret,
            self.refresh_token,
            self.private_key,
            self.client_key,
            self.client_assertion,
            self.subject_token,
        )


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    token_type: str
    issued_at: float
    expires_at: float
    scope: str | None = None
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EndpointPolicy:
    """Operator-wide rules for which token endpoints may be called."""

    allow_http: bool = False
    allowed_hosts: frozenset[str] = frozenset()  # empty: any host
