"""What the operator refuses to do for whoever writes an OAuthClient: pure decisions over
plain values, so that they are testable as tables (README "Threat model").

Whoever may create an OAuthClient in a namespace, but may not read its Secrets, create pods
or mint tokens there, must get no Secret value and no ServiceAccount token out of the
operator, whatever fields they set. Three rules hold in every mode:
- no output Secret that makes Kubernetes mint or honour a credential (a ServiceAccount
  token Secret, a bootstrap token, the service-account annotations);
- a ServiceAccount token or a subject token goes only over https (oauth/client.py);
- an owner's opt-in, when present, is honoured: a Secret's `allowed-clients` annotation and
  a ServiceAccount's `token-endpoints` annotation.
In `shared` tenancy (the default) the opt-ins are required, and inline endpoints must be
ones the platform trusts (`--trusted-endpoints`); `single` is the one switch back to the
single-tenant behaviour."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# The same as spec.API_GROUP (spec imports this module; a unit test checks they agree).
GROUP = "oauth-token-operator.dev"


class Tenancy(StrEnum):
    SHARED = "shared"  # tenants are not trusted with each other's Secrets and identities
    SINGLE = "single"  # every author of an OAuthClient may read its namespace's Secrets


# Output Secrets Kubernetes fills with, or honours as, a credential: a ServiceAccount token
# Secret (the token controller writes a non-expiring token of the ServiceAccount its
# annotation names) and a bootstrap token (kube-system: the apiserver authenticates it).
MINTING_SECRET_TYPES = frozenset(
    {"kubernetes.io/service-account-token", "bootstrap.kubernetes.io/token"}
)
SERVICE_ACCOUNT_KEY_PREFIX = "kubernetes.io/service-account."

# The annotation by which whoever controls a Secret lets OAuthClients of its namespace use
# it: comma-separated OAuthClient names, or "*" for every OAuthClient of the namespace.
ALLOWED_CLIENTS_ANNOTATION = f"{GROUP}/allowed-clients"
# The ServiceAccount annotation that opts in: the audiences (comma-separated) for which the
# operator may mint the ServiceAccount's tokens.
SERVICE_ACCOUNT_AUDIENCES_ANNOTATION = f"{GROUP}/token-audiences"
# ... and where they may be sent: issuer or token endpoint URLs (comma-separated), compared
# with the OAuthClient's spec.issuer or spec.tokenEndpoint (trailing slash ignored).
SERVICE_ACCOUNT_ENDPOINTS_ANNOTATION = f"{GROUP}/token-endpoints"
# Audiences a kube-apiserver accepts in common setups: never minted (the issuer and the
# apiserver's own audiences are checked at run time too).
KUBERNETES_AUDIENCES = frozenset(
    {
        "https://kubernetes.default.svc",
        "https://kubernetes.default.svc.cluster.local",
        "https://kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes",
        "api",
    }
)
# TokenRequest's floor; Keycloak and most providers refuse assertions living over an hour.
SERVICE_ACCOUNT_TOKEN_SECONDS = (600, 3600)


def minting_output_refusal(
    secret_type: str, labels: Iterable[tuple[str, str]], annotations: Iterable[tuple[str, str]]
) -> str | None:
    """Why an output Secret of this type, labels and annotations must not be written."""
    if secret_type in MINTING_SECRET_TYPES:
        return (
            f"spec.secret.type {secret_type} is refused: Kubernetes would put a credential "
            "of its own into such a Secret (or accept its contents as one)"
        )
    for where, pairs in (("annotations", annotations), ("labels", labels)):
        for key, _ in pairs:
            if key.startswith(SERVICE_ACCOUNT_KEY_PREFIX):
                return (
                    f"spec.secret.{where}: {key} is refused: keys starting "
                    f"{SERVICE_ACCOUNT_KEY_PREFIX} ask Kubernetes for a ServiceAccount's token"
                )
    return None


def _listed(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def secret_use_refusal(
    secret: Mapping[str, Any] | None, secret_name: str, client: str, tenancy: Tenancy, what: str
) -> str | None:
    """Why OAuthClient `client` must not send (or write back) the values of this Secret.
    `what` says what the Secret is for, in the message. An absent annotation is consent in
    single tenancy only; a present one is honoured in both."""
    raw = _annotations(secret).get(ALLOWED_CLIENTS_ANNOTATION)
    if raw is None:
        if tenancy is Tenancy.SINGLE:
            return None
        return (
            f"Secret {secret_name} ({what}) has not opted in: whoever controls it must "
            f'annotate it {ALLOWED_CLIENTS_ANNOTATION}: "{client}" (or "*"), naming the '
            "OAuthClients that may send its values to their provider"
        )
    allowed = _listed(str(raw))
    if "*" in allowed or client in allowed:
        return None
    return (
        f"Secret {secret_name} ({what}) does not list OAuthClient {client} in its annotation "
        f"{ALLOWED_CLIENTS_ANNOTATION}"
    )


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def service_account_endpoint_refusal(
    account: Mapping[str, Any], name: str, destination: str, tenancy: Tenancy
) -> str | None:
    """Why a token of ServiceAccount `name` must not be minted for `destination` (the
    OAuthClient's issuer or token endpoint)."""
    raw = _annotations(account).get(SERVICE_ACCOUNT_ENDPOINTS_ANNOTATION)
    if raw is None:
        if tenancy is Tenancy.SINGLE:
            return None
        return (
            f"ServiceAccount {name} does not say where its tokens may be sent: its annotation "
            f"{SERVICE_ACCOUNT_ENDPOINTS_ANNOTATION} must list {destination} (comma-separated "
            "issuer or token endpoint URLs)"
        )
    if any(_same_url(listed, destination) for listed in _listed(str(raw))):
        return None
    return (
        f"ServiceAccount {name} does not list {destination} in its annotation "
        f"{SERVICE_ACCOUNT_ENDPOINTS_ANNOTATION}: its tokens are not sent there"
    )


def endpoint_trust_refusal(
    destination: str, trusted: frozenset[str], tenancy: Tenancy
) -> str | None:
    """Why an inline issuer or token endpoint must not be used: in shared tenancy only the
    ones the platform listed (--trusted-endpoints) are."""
    if tenancy is Tenancy.SINGLE or any(_same_url(t, destination) for t in trusted):
        return None
    return (
        f"{destination} is not one of the operator's trusted endpoints: in shared tenancy an "
        "OAuthClient may use only an issuer or token endpoint the platform lists "
        "(--trusted-endpoints, chart value trustedEndpoints)"
    )


@dataclass(frozen=True)
class Guard:
    """The operator's tenancy settings, applied to one OAuthClient's run."""

    tenancy: Tenancy = Tenancy.SHARED
    trusted_endpoints: frozenset[str] = frozenset()

    def endpoint_refusal(self, destination: str) -> str | None:
        return endpoint_trust_refusal(destination, self.trusted_endpoints, self.tenancy)

    def secret_refusal(
        self, secret: Mapping[str, Any] | None, name: str, client: str, what: str
    ) -> str | None:
        return secret_use_refusal(secret, name, client, self.tenancy, what)


SINGLE_TENANT = Guard(Tenancy.SINGLE)
