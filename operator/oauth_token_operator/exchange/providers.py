"""Providers as resources: an OAuthClient's spec.providerRef names a ClusterOAuthProvider
(cluster-scoped, made by cluster administrators, offered to the namespaces it lists or
selects) or an OAuthProvider of the client's own namespace (made by its administrators).
The provider says where tokens come from and with which CA, what a client gets by default
(client authentication, scopes, audience, extra parameters) and what it may use (grant
types, client authentication methods); the client says only the rest.

Resolved at the start of every run, so an edit reaches the provider's clients with their
next run (app/handlers.py wakes them within seconds); the spec hash covers what the provider
adds, so a new endpoint, CA or default means a new token. The parsing and the decisions
here are pure; `resolve` is the one read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import ProviderAPI
from oauth_token_operator.oauth.types import (
    CLUSTER_PROVIDER_KIND,
    PROVIDER_KIND,
    ClientAuth,
    Endpoint,
    GrantType,
    OAuthError,
    Outcome,
)
from oauth_token_operator.resource.spec import API_GROUP, API_VERSION, OAuthClientSpec, ProviderCA

PLURALS = {CLUSTER_PROVIDER_KIND: "clusteroauthproviders", PROVIDER_KIND: "oauthproviders"}
# The methods a provider may make the default: those that need no field of the client's
# own (a certificate, a ServiceAccount), so that a default never makes a client invalid.
DEFAULTABLE_AUTH = frozenset({ClientAuth.BASIC, ClientAuth.POST, ClientAuth.PRIVATE_KEY_JWT})
_SELECTOR_OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


class ProviderSpecError(ValueError):
    """A provider object the operator cannot use (the CRD's schema refuses most of these)."""


@dataclass(frozen=True)
class Selector:
    """A metav1.LabelSelector: every term must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    # (key, operator, values)
    match_expressions: tuple[tuple[str, str, frozenset[str]], ...] = ()

    def selects(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, operator, values in self.match_expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Provider:
    kind: str
    name: str
    endpoint: Endpoint
    ca: ProviderCA | None = None
    default_auth: ClientAuth | None = None
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    extra_params: tuple[tuple[str, str], ...] = ()
    grant_types: frozenset[GrantType] = frozenset()  # empty: every grant type
    client_auths: frozenset[ClientAuth] = frozenset()  # empty: every method
    # ClusterOAuthProvider only: the namespaces it serves ("*": all), and/or a selector.
    namespaces: frozenset[str] = frozenset()
    selector: Selector | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.name}"


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProviderSpecError(f"{path} must be a list of non-empty strings")
    return tuple(value)


def _string_map(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProviderSpecError(f"{path} must map strings to strings")
    return tuple(sorted(value.items()))


def _enums(cls: type[GrantType] | type[ClientAuth], value: Any, path: str) -> frozenset[Any]:
    try:
        return frozenset(cls(v) for v in _strings(value, path))
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ProviderSpecError(f"{path} may list only {allowed}") from None


def _selector(value: Any) -> Selector | None:
    if value is None:
        return None
    path = "spec.namespaceSelector"
    if not isinstance(value, dict):
        raise ProviderSpecError(f"{path} must be a label selector")
    expressions = []
    for term in value.get("matchExpressions") or []:
        operator = term.get("operator") if isinstance(term, dict) else None
        if operator not in _SELECTOR_OPERATORS or not isinstance(term.get("key"), str):
            raise ProviderSpecError(
                f"{path}.matchExpressions: each needs a key and an operator of "
                f"{', '.join(sorted(_SELECTOR_OPERATORS))}"
            )
        values = frozenset(_strings(term.get("values"), f"{path}.matchExpressions.values"))
        if (operator in ("In", "NotIn")) != bool(values):
            raise ProviderSpecError(
                f"{path}.matchExpressions: {operator} needs values if and only if it is In or NotIn"
            )
        expressions.append((term["key"], str(operator), values))
    return Selector(
        _string_map(value.get("matchLabels"), f"{path}.matchLabels"), tuple(expressions)
    )


def _ca(tls: Any, kind: str, namespace: str | None) -> ProviderCA | None:
    if not isinstance(tls, dict):
        return None
    pem, ref = tls.get("caBundle"), tls.get("caBundleSecretRef")
    if pem is not None and ref is not None:
        raise ProviderSpecError("set at most one of spec.tls.caBundle and caBundleSecretRef")
    if pem is not None:
        if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
            raise ProviderSpecError("spec.tls.caBundle must hold PEM certificates")
        return ProviderCA(pem=pem)
    if ref is None:
        return None
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
        raise ProviderSpecError("spec.tls.caBundleSecretRef.name is required")
    key = ref.get("key") or "ca.crt"
    if namespace is None:
        raise ProviderSpecError(
            f"spec.tls.caBundleSecretRef: a {kind}'s CA bundle Secret lives in the operator's "
            "namespace, which this process was not told (--operator-namespace, POD_NAMESPACE)"
        )
    return ProviderCA(secret=(namespace, ref["name"], str(key)))


def parse_provider(body: Mapping[str, Any], kind: str, home: str | None) -> Provider:
    """A ClusterOAuthProvider or OAuthProvider object as a Provider. `home` is the operator's
    namespace, where a ClusterOAuthProvider's CA bundle Secret is."""
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise ProviderSpecError("spec is missing")
    issuer, token_endpoint = spec.get("issuer"), spec.get("tokenEndpoint")
    urls = [u for u in (issuer, token_endpoint) if u]
    if len(urls) != 1 or not all(
        isinstance(u, str) and u.startswith(("https://", "http://")) for u in urls
    ):
        raise ProviderSpecError("set exactly one http(s) spec.issuer or spec.tokenEndpoint")
    cluster = kind == CLUSTER_PROVIDER_KIND
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ProviderSpecError("spec.defaults must be an object")
    default_auth = defaults.get("clientAuthentication")
    if default_auth is not None and default_auth not in {a.value for a in DEFAULTABLE_AUTH}:
        raise ProviderSpecError(
            "spec.defaults.clientAuthentication may be only "
            + ", ".join(sorted(a.value for a in DEFAULTABLE_AUTH))
        )
    audience = defaults.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience):
        raise ProviderSpecError("spec.defaults.audience must be a non-empty string")
    name = str(meta.get("name", ""))
    return Provider(
        kind=kind,
        name=name,
        endpoint=Endpoint(
            issuer=issuer or None,
            token_endpoint=token_endpoint or None,
            provider=name,
            provider_kind=kind,
            provider_namespace=None if cluster else str(meta.get("namespace") or ""),
        ),
        ca=_ca(spec.get("tls"), kind, home if cluster else meta.get("namespace")),
        default_auth=ClientAuth(default_auth) if default_auth else None,
        scopes=_strings(defaults.get("scopes"), "spec.defaults.scopes"),
        audience=audience,
        extra_params=_string_map(defaults.get("extraParams"), "spec.defaults.extraParams"),
        grant_types=_enums(GrantType, spec.get("allowedGrantTypes"), "spec.allowedGrantTypes"),
        client_auths=_enums(
            ClientAuth,
            spec.get("allowedClientAuthentications"),
            "spec.allowedClientAuthentications",
        ),
        namespaces=frozenset(_strings(spec.get("namespaces"), "spec.namespaces")),
        selector=_selector(spec.get("namespaceSelector")) if cluster else None,
    )


def serves(provider: Provider, namespace: str, labels: Mapping[str, str] | None) -> bool:
    """Whether a ClusterOAuthProvider serves OAuthClients of `namespace` (with `labels`; None:
    not read, because the list alone decides). An OAuthProvider serves its own namespace."""
    if provider.kind != CLUSTER_PROVIDER_KIND:
        return True
    if "*" in provider.namespaces or namespace in provider.namespaces:
        return True
    return provider.selector is not None and provider.selector.selects(labels or {})


def _refused(message: str) -> OAuthError:
    return OAuthError(Outcome.NEEDS_HUMAN, reasons.PROVIDER_NOT_ALLOWED, message)


def applied(provider: Provider, spec: OAuthClientSpec) -> OAuthClientSpec:
    """`spec` with what the provider adds: its endpoint and CA, and its defaults where the
    client set nothing; refused if the provider does not allow what the client uses."""
    request = spec.request
    auth = request.client_auth
    if spec.client_auth_defaulted and provider.default_auth is not None:
        auth = provider.default_auth
    if provider.grant_types and request.grant_type not in provider.grant_types:
        raise _refused(
            f"{provider.ref} does not allow grantType {request.grant_type.value} (it allows "
            f"{', '.join(sorted(g.value for g in provider.grant_types))})"
        )
    if provider.client_auths and auth not in provider.client_auths:
        raise _refused(
            f"{provider.ref} does not allow clientAuthentication {auth.value} (it allows "
            f"{', '.join(sorted(a.value for a in provider.client_auths))})"
        )
    extra = dict(provider.extra_params) | dict(request.extra_params)
    request = replace(
        request,
        endpoint=provider.endpoint,
        client_auth=auth,
        scopes=request.scopes or provider.scopes,
        audience=request.audience if request.audience is not None else provider.audience,
        extra_params=tuple(sorted(extra.items())),
    )
    return replace(spec, request=request, provider_ca=provider.ca)


async def resolve(
    api: ProviderAPI | None, spec: OAuthClientSpec, home: str | None = None
) -> OAuthClientSpec:
    """`spec` with its provider's endpoint, CA and defaults in place (as is without
    spec.providerRef). `home`: the operator's namespace."""
    endpoint = spec.request.endpoint
    if endpoint.provider is None:
        return spec
    provider = await provider_for(
        api, endpoint.provider_kind, endpoint.provider, spec.key.namespace, home
    )
    return applied(provider, spec)


async def provider_for(
    api: ProviderAPI | None,
    kind: str,
    name: str,
    namespace: str,
    home: str | None,
    named_by: str = "spec.providerRef",
) -> Provider:
    """The provider `kind` `name` as it serves clients of `namespace` (an OAuthProvider: the
    one there): read, parsed and checked to serve that namespace, or an OAuthError
    (ProviderNotFound, ProviderInvalid, ProviderNotAllowed). `named_by`: what named it, for
    the messages."""
    ref = f"{kind} {name}"
    cluster = kind == CLUSTER_PROVIDER_KIND
    try:
        body = (
            None
            if api is None
            else await api.get_object(
                API_GROUP, API_VERSION, PLURALS[kind], None if cluster else namespace, name
            )
        )
    except KubeError as exc:
        if not exc.kind_missing:
            raise
        raise OAuthError(
            Outcome.TRANSIENT,  # installed later: its providers' events wake their clients
            reasons.PROVIDER_NOT_FOUND,
            f"{ref} ({named_by}): the {kind} CRD is not installed "
            "(kubectl apply -f deploy/crd-providers.yaml, or the chart's crds/)",
        ) from None
    if body is None:
        where = "" if cluster else f" in namespace {namespace}"
        raise OAuthError(
            Outcome.TRANSIENT,  # created later: the provider watch wakes its clients
            reasons.PROVIDER_NOT_FOUND,
            f"{ref} ({named_by}) not found{where}",
        )
    try:
        provider = parse_provider(body, kind, home)
    except ProviderSpecError as exc:
        raise OAuthError(Outcome.NEEDS_HUMAN, reasons.PROVIDER_INVALID, f"{ref}: {exc}") from None
    labels: Mapping[str, str] | None = None
    if not serves(provider, namespace, None) and provider.selector is not None and api:
        labels = await api.namespace_labels(namespace)
    if not serves(provider, namespace, labels):
        raise _refused(
            f"{provider.ref} does not list namespace {namespace} in spec.namespaces"
            + (" nor select it by spec.namespaceSelector" if provider.selector else "")
        )
    return provider
