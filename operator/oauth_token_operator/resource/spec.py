"""An OAuthClient as immutable typed values (resource/parse.py makes them from the object),
the CRD's names, and the labels and annotations the operator puts on the Secrets it owns."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum

from oauth_token_operator.oauth.types import (
    ClientAuth,
    TokenRequest,
)

API_GROUP = "oauth-token-operator.dev"
API_VERSION = "v1alpha1"
KIND = "OAuthClient"
PLURAL = "oauthclients"

# Labels and annotations the operator puts on the Secrets it owns.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "oauth-token-operator"
OWNER_LABEL = f"{API_GROUP}/oauthclient"
EXPIRES_AT_ANNOTATION = f"{API_GROUP}/expires-at"
ISSUED_AT_ANNOTATION = f"{API_GROUP}/issued-at"
SPEC_HASH_ANNOTATION = f"{API_GROUP}/spec-hash"
CLIENT_CERTIFICATE_ANNOTATION = f"{API_GROUP}/client-certificate-secret"

# Parameters the operator sets itself; extraParams may not override them.
RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "refresh_token",
        "scope",
        "audience",
        "resource",
        "client_assertion",
        "client_assertion_type",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
    }
)

# A provider's token that lives shorter than this cannot be refreshed before it expires.
MIN_DEFAULT_LIFETIME = 60.0


class SpecError(ValueError):
    """The OAuthClient cannot be acted on as written; the message is shown to the user."""


# Methods whose credential is not in the credentials Secret: spec.clientId may replace it.
SECRETLESS_AUTH = frozenset(
    {
        ClientAuth.SERVICE_ACCOUNT_TOKEN,
        ClientAuth.TLS_CLIENT_AUTH,
        ClientAuth.SELF_SIGNED_TLS_CLIENT_AUTH,
    }
)


@dataclass(frozen=True)
class ObjectKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class CredentialKeys:
    secret_name: str
    client_id: str = "client_id"
    client_secret: str = "client_secret"
    refresh_token: str = "refresh_token"
    private_key: str = "private_key"


@dataclass(frozen=True)
class OutputSecret:
    name: str
    type: str = "Opaque"
    access_token_key: str = "access_token"
    token_type_key: str = "token_type"
    expires_at_key: str = "expires_at"
    id_token_key: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    # Extra keys rendered from templates (resource/templates.py), over the token and these values.
    templates: tuple[tuple[str, str], ...] = ()
    values: tuple[tuple[str, str], ...] = ()
    values_config_map: str | None = None  # its data are values too; literal values win

    def fixed_keys(self) -> tuple[str, ...]:
        """The keys the operator writes itself."""
        keys = (self.access_token_key, self.token_type_key, self.expires_at_key, self.id_token_key)
        return tuple(k for k in keys if k)


class WorkloadKind(StrEnum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"


@dataclass(frozen=True)
class RolloutTarget:
    """A workload in the OAuthClient's namespace restarted when the token changes."""

    kind: WorkloadKind
    name: str


@dataclass(frozen=True)
class RefreshPolicy:
    renew_before_percentage: int = 33
    renew_before: float | None = None  # seconds; overrides the percentage when set
    jitter_percentage: int = 10
    min_interval: float = 30.0
    default_lifetime: float = 3600.0


@dataclass(frozen=True)
class ServiceAccountToken:
    """A token of a ServiceAccount in the client's own namespace, minted per exchange."""

    name: str
    audience: str
    expiration_seconds: int = 600


@dataclass(frozen=True)
class ProviderCA:
    """A provider's CA bundle: inline PEM, or a Secret key (namespace, name, key)."""

    pem: str | None = field(default=None, repr=False)
    secret: tuple[str, str, str] | None = None

    def fingerprint(self) -> str:
        pem = hashlib.sha256((self.pem or "").encode()).hexdigest()[:16]
        return f"{pem}:{self.secret}"


@dataclass(frozen=True)
class OAuthClientSpec:
    key: ObjectKey
    uid: str
    generation: int
    request: TokenRequest
    credentials: CredentialKeys
    output: OutputSecret
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    ca_bundle: tuple[str, str] | None = None  # (secret name, key)
    # A kubernetes.io/tls Secret whose certificate the operator presents to the provider.
    client_certificate: str | None = None
    service_account_token: ServiceAccountToken | None = None
    # The client ID given in the spec (spec.clientId), for methods without a secret: then
    # there is no credentials Secret (credentials.secret_name is "").
    client_id: str | None = None
    # grant token_exchange: where the subject token comes from, a Secret key (name, key) or
    # a ServiceAccount token minted per exchange.
    subject_secret: tuple[str, str] | None = None
    subject_service_account: ServiceAccountToken | None = None
    # Not part of spec_hash: which pods to restart does not change the token.
    rollout_targets: tuple[RolloutTarget, ...] = ()
    # spec.clientAuthentication was not set: a provider's default may take its place.
    client_auth_defaulted: bool = False
    # The CA bundle of the client's provider (exchange/providers.py puts it here), in place of
    # spec.tls.caBundleSecretRef, which a client with a providerRef may not set.
    provider_ca: ProviderCA | None = None

    def ca_secret(self) -> tuple[str, str, str] | None:
        """Where the CA bundle Secret is: (namespace, name, key); None without one."""
        if self.provider_ca is not None:
            return self.provider_ca.secret
        if self.ca_bundle:
            return (self.key.namespace, *self.ca_bundle)
        return None

    @functools.cached_property  # the spec is immutable; asked for on every run
    def spec_hash(self) -> str:
        """Changes whenever a field that affects the issued token or the output Secret changes."""
        return spec_hash(self)

    def secret_names_read(self) -> frozenset[str]:
        names = {self.credentials.secret_name} - {""}
        if self.ca_bundle:
            names.add(self.ca_bundle[0])
        if self.client_certificate:
            names.add(self.client_certificate)
        if self.subject_secret:
            names.add(self.subject_secret[0])
        return frozenset(names)


def spec_hash(spec: OAuthClientSpec) -> str:
    material = json.dumps(
        [
            repr(spec.request),
            repr(spec.credentials),
            repr(spec.output),
            repr(spec.ca_bundle),
            repr(spec.client_certificate),
            repr(spec.service_account_token),
            repr(spec.subject_secret),
            repr(spec.subject_service_account),
            repr(spec.client_id),
        ]
        # Only when set, so that the hash of every client without one stays what it was.
        + ([spec.provider_ca.fingerprint()] if spec.provider_ca else [])
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]
