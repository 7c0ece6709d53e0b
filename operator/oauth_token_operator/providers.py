"""Providers the platform made: an OAuthClient's spec.providerRef names a
ClusterOAuthProvider (cluster-scoped, created by cluster administrators only), whose
endpoint it then uses if the provider lists the client's namespace. Resolved at the start of
every run, so that an edit of the provider reaches its clients with their next run (the
spec hash covers the resolved endpoint: a new endpoint means a new token).

Not yet here (issue 22): a namespaced OAuthProvider, a namespace selector, the provider's CA
bundle and defaults, a status with a Ready condition, and a watch that re-runs clients within
seconds of a provider edit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import reasons
from .oauth import OAuthError, Outcome
from .ports import ProviderAPI
from .spec import API_GROUP, API_VERSION, Endpoint, OAuthClientSpec

PROVIDER_KIND = "ClusterOAuthProvider"
PROVIDER_PLURAL = "clusteroauthproviders"


def endpoint_of(provider: dict[str, Any], name: str, namespace: str) -> Endpoint:
    """The provider's endpoint for a client in `namespace`, or why it cannot have it."""
    spec = provider.get("spec") or {}
    allowed = spec.get("namespaces") or []
    if not isinstance(allowed, list) or ("*" not in allowed and namespace not in allowed):
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.PROVIDER_NOT_ALLOWED,
            f"{PROVIDER_KIND} {name} does not list namespace {namespace} in spec.namespaces",
        )
    issuer, token_endpoint = spec.get("issuer"), spec.get("tokenEndpoint")
    urls = [u for u in (issuer, token_endpoint) if u]
    if len(urls) != 1 or not all(
        isinstance(u, str) and u.startswith(("https://", "http://")) for u in urls
    ):
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.PROVIDER_NOT_FOUND,
            f"{PROVIDER_KIND} {name} needs exactly one http(s) spec.issuer or spec.tokenEndpoint",
        )
    return Endpoint(issuer=issuer or None, token_endpoint=token_endpoint or None, provider=name)


async def resolve(api: ProviderAPI | None, spec: OAuthClientSpec) -> OAuthClientSpec:
    """`spec` with its provider's endpoint in place (as is without spec.providerRef)."""
    name = spec.request.endpoint.provider
    if name is None:
        return spec
    body = (
        None
        if api is None
        else await api.get_object(API_GROUP, API_VERSION, PROVIDER_PLURAL, None, name)
    )
    if body is None:
        raise OAuthError(
            Outcome.TRANSIENT,  # not watched: retried with the backoff until it exists
            reasons.PROVIDER_NOT_FOUND,
            f"{PROVIDER_KIND} {name} (spec.providerRef) not found",
        )
    endpoint = endpoint_of(body, name, spec.key.namespace)
    return replace(spec, request=replace(spec.request, endpoint=endpoint))
