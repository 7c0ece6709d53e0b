"""spec.providerRef, ClusterOAuthProviders and OAuthProviders: parsing, which namespaces a
provider serves, what it adds to a client (endpoint, CA, defaults) and what it refuses (over
the fake Kubernetes API)."""

from __future__ import annotations

from typing import Any

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.exchange.providers import (
    PLURALS,
    Provider,
    ProviderSpecError,
    Selector,
    applied,
    parse_provider,
    resolve,
    serves,
)
from oauth_token_operator.oauth.types import (
    CLUSTER_PROVIDER_KIND,
    PROVIDER_KIND,
    ClientAuth,
    Endpoint,
    OAuthError,
)
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.spec import ProviderCA, SpecError
from tests.unit.fakes import FakeKube
from tests.unit.test_spec import body

ISSUER = "https://sso.example/realms/apps"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CLUSTER = PLURALS[CLUSTER_PROVIDER_KIND]


def by_ref(kind: str | None = None, **spec: Any) -> dict[str, Any]:
    ref = {"name": "sso"} if kind is None else {"kind": kind, "name": "sso"}
    obj = body(providerRef=ref)
    del obj["spec"]["issuer"]
    obj["spec"].update(spec)
    return obj


def test_a_provider_ref_is_the_endpoint_cluster_scoped_unless_it_says_otherwise() -> None:
    assert parse(by_ref()).request.endpoint == Endpoint(provider="sso")
    own = parse(by_ref(PROVIDER_KIND)).request.endpoint
    assert (own.provider, own.provider_kind) == ("sso", PROVIDER_KIND)
    assert own.provider_ref == "OAuthProvider sso"
    with pytest.raises(SpecError, match="kind 'Issuer' is not one of"):
        parse(by_ref("Issuer"))


@pytest.mark.parametrize("extra", [{"issuer": ISSUER}, {"tokenEndpoint": ISSUER + "/token"}])
def test_a_provider_ref_excludes_inline_endpoints(extra: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match="exactly one of"):
        parse(by_ref(**extra))


def test_a_client_with_a_provider_ref_takes_the_providers_ca() -> None:
    with pytest.raises(SpecError, match="provider's CA bundle"):
        parse(by_ref(tls={"caBundleSecretRef": {"name": "ca"}}))


def provider(namespaces: Any = None, **spec: Any) -> dict[str, Any]:
    fields = {"namespaces": namespaces} if namespaces is not None else {}
    return {"metadata": {"name": "sso"}, "spec": {**fields, **spec}}


def cluster(obj: dict[str, Any], home: str | None = "oauth-system") -> Provider:
    return parse_provider(obj, CLUSTER_PROVIDER_KIND, home)


@pytest.mark.parametrize(
    ("obj", "namespace", "labels", "served"),
    [
        (provider(["ml"], issuer=ISSUER), "ml", None, True),
        (provider(["*"], issuer=ISSUER), "any", None, True),
        (provider(["other"], issuer=ISSUER), "ml", None, False),
        (provider([], issuer=ISSUER), "ml", None, False),
        (provider(None, issuer=ISSUER), "ml", None, False),
        (provider(issuer=ISSUER, namespaceSelector={"matchLabels": {"t": "a"}}), "ml", {}, False),
        (
            provider(issuer=ISSUER, namespaceSelector={"matchLabels": {"t": "a"}}),
            "ml",
            {"t": "a", "x": "y"},
            True,
        ),
        (
            provider(["ml"], issuer=ISSUER, namespaceSelector={"matchLabels": {"t": "a"}}),
            "ml",
            {},
            True,  # listed or selected
        ),
    ],
)
def test_which_namespaces_a_cluster_provider_serves(
    obj: dict[str, Any], namespace: str, labels: dict[str, str] | None, served: bool
) -> None:
    assert serves(cluster(obj), namespace, labels) is served


@pytest.mark.parametrize(
    ("expressions", "labels", "selected"),
    [
        ([{"key": "tier", "operator": "In", "values": ["a", "b"]}], {"tier": "b"}, True),
        ([{"key": "tier", "operator": "In", "values": ["a"]}], {"tier": "b"}, False),
        ([{"key": "tier", "operator": "In", "values": ["a"]}], {}, False),
        ([{"key": "tier", "operator": "NotIn", "values": ["a"]}], {}, True),
        ([{"key": "tier", "operator": "NotIn", "values": ["a"]}], {"tier": "a"}, False),
        ([{"key": "tier", "operator": "Exists"}], {"tier": ""}, True),
        ([{"key": "tier", "operator": "Exists"}], {}, False),
        ([{"key": "tier", "operator": "DoesNotExist"}], {}, True),
        (
            [
                {"key": "tier", "operator": "Exists"},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
            ],
            {"tier": "x", "env": "prod"},
            False,  # every term must hold
        ),
    ],
)
def test_a_namespace_selector_means_what_kubernetes_label_selectors_mean(
    expressions: list[dict[str, Any]], labels: dict[str, str], selected: bool
) -> None:
    obj = provider(issuer=ISSUER, namespaceSelector={"matchExpressions": expressions})
    selector = cluster(obj).selector
    assert selector is not None and selector.selects(labels) is selected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "exactly one http"),
        ({"issuer": "ftp://x"}, "exactly one http"),
        ({"issuer": ISSUER, "tokenEndpoint": ISSUER}, "exactly one http"),
        ({"issuer": ISSUER, "tls": {"caBundle": "not pem"}}, "PEM certificates"),
        (
            {"issuer": ISSUER, "tls": {"caBundle": PEM, "caBundleSecretRef": {"name": "c"}}},
            "at most one",
        ),
        ({"issuer": ISSUER, "defaults": {"clientAuthentication": "none"}}, "may be only"),
        ({"issuer": ISSUER, "allowedGrantTypes": ["password"]}, "may list only"),
        (
            {"issuer": ISSUER, "namespaceSelector": {"matchExpressions": [{"key": "k"}]}},
            "operator of",
        ),
        (
            {
                "issuer": ISSUER,
                "namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]},
            },
            "needs values",
        ),
    ],
)
def test_a_provider_that_cannot_be_used_says_why(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ProviderSpecError, match=message):
        cluster(provider(["ml"], **spec))


def test_a_cluster_providers_ca_secret_is_in_the_operators_namespace() -> None:
    obj = provider(["ml"], issuer=ISSUER, tls={"caBundleSecretRef": {"name": "sso-ca"}})
    assert cluster(obj).ca == ProviderCA(secret=("oauth-system", "sso-ca", "ca.crt"))
    with pytest.raises(ProviderSpecError, match="--operator-namespace"):
        cluster(obj, home=None)
    own = {**obj, "metadata": {"name": "sso", "namespace": "ml"}}
    ca = parse_provider(own, PROVIDER_KIND, "oauth-system").ca
    assert ca == ProviderCA(secret=("ml", "sso-ca", "ca.crt"))


def test_a_provider_fills_in_what_the_client_left_unset() -> None:
    sso = cluster(
        provider(
            ["*"],
            issuer=ISSUER,
            tls={"caBundle": PEM},
            defaults={
                "clientAuthentication": "client_secret_post",
                "scopes": ["api"],
                "audience": "https://api.example",
                "extraParams": {"tenant": "apps", "prompt": "none"},
            },
        )
    )
    bare = applied(sso, parse(by_ref()))
    assert bare.request.endpoint == Endpoint(issuer=ISSUER, provider="sso")
    assert bare.request.client_auth is ClientAuth.POST
    assert bare.request.scopes == ("api",)
    assert bare.request.audience == "https://api.example"
    assert bare.request.extra_params == (("prompt", "none"), ("tenant", "apps"))
    assert bare.provider_ca is not None and bare.provider_ca.pem == PEM
    own = applied(
        sso,
        parse(
            by_ref(
                clientAuthentication="client_secret_basic",
                scopes=["mine"],
                audience="mine",
                extraParams={"tenant": "mine"},
            )
        ),
    )
    assert own.request.client_auth is ClientAuth.BASIC  # set explicitly: kept
    assert own.request.scopes == ("mine",)
    assert own.request.audience == "mine"
    assert own.request.extra_params == (("prompt", "none"), ("tenant", "mine"))
    assert bare.spec_hash != own.spec_hash


@pytest.mark.parametrize(
    ("allowed", "client", "message"),
    [
        ({"allowedGrantTypes": ["client_credentials"]}, {}, None),
        (
            {"allowedGrantTypes": ["client_credentials"]},
            {"grantType": "refresh_token"},
            "does not allow grantType refresh_token",
        ),
        ({"allowedClientAuthentications": ["private_key_jwt"]}, {}, "client_secret_basic"),
        (
            {
                "allowedClientAuthentications": ["private_key_jwt"],
                "defaults": {"clientAuthentication": "private_key_jwt"},
            },
            {},
            None,  # the default is what is checked
        ),
    ],
)
def test_a_provider_refuses_what_it_does_not_allow(
    allowed: dict[str, Any], client: dict[str, Any], message: str | None
) -> None:
    sso = cluster(provider(["*"], issuer=ISSUER, **allowed))
    spec = parse(by_ref(**client))
    if message is None:
        assert applied(sso, spec).request.endpoint.issuer == ISSUER
        return
    with pytest.raises(OAuthError, match=message) as refused:
        applied(sso, spec)
    assert refused.value.reason == reasons.PROVIDER_NOT_ALLOWED


async def test_resolve_puts_the_providers_endpoint_in_place_and_changes_the_hash() -> None:
    kube = FakeKube()
    spec = parse(by_ref())
    with pytest.raises(OAuthError) as missing:
        await resolve(kube, spec)
    assert missing.value.reason == reasons.PROVIDER_NOT_FOUND
    kube.cluster_objects[CLUSTER, "sso"] = provider(["ml"], issuer=ISSUER)
    first = await resolve(kube, spec)
    assert first.request.endpoint == Endpoint(issuer=ISSUER, provider="sso")
    kube.cluster_objects[CLUSTER, "sso"] = provider(["ml"], issuer=ISSUER + "/v2")
    second = await resolve(kube, spec)
    assert first.spec_hash != second.spec_hash  # a provider edit gets a new token
    kube.cluster_objects[CLUSTER, "sso"] = provider(["ml"], issuer=ISSUER, tls={"caBundle": PEM})
    assert (await resolve(kube, spec)).spec_hash != first.spec_hash  # a new CA: a new token
    assert await resolve(kube, parse(body())) == parse(body())  # inline: as is
    assert kube.namespace_reads == 0  # the list decided: no namespace read


async def test_resolve_reads_the_namespaces_labels_only_for_a_selector() -> None:
    kube = FakeKube()
    kube.cluster_objects[CLUSTER, "sso"] = provider(
        issuer=ISSUER, namespaceSelector={"matchLabels": {"sso": "yes"}}
    )
    spec = parse(by_ref())
    with pytest.raises(OAuthError, match="nor select it") as refused:
        await resolve(kube, spec)
    assert refused.value.reason == reasons.PROVIDER_NOT_ALLOWED
    kube.namespaces["ml"] = {"sso": "yes"}
    assert (await resolve(kube, spec)).request.endpoint.issuer == ISSUER
    assert kube.namespace_reads == 2


async def test_resolve_finds_an_oauthprovider_in_the_clients_namespace_only() -> None:
    kube = FakeKube()
    spec = parse(by_ref(PROVIDER_KIND))
    kube.cluster_objects[CLUSTER, "sso"] = provider(["*"], issuer=ISSUER)  # not this kind
    kube.cluster_objects[PLURALS[PROVIDER_KIND], "other/sso"] = provider(issuer=ISSUER)
    with pytest.raises(
        OAuthError, match=r"OAuthProvider sso \(spec.providerRef\) not found in namespace ml"
    ):
        await resolve(kube, spec)
    own = {"metadata": {"name": "sso", "namespace": "ml"}, "spec": {"tokenEndpoint": ISSUER}}
    kube.cluster_objects[PLURALS[PROVIDER_KIND], "ml/sso"] = own
    resolved = await resolve(kube, spec)
    assert resolved.request.endpoint.token_endpoint == ISSUER
    assert resolved.request.endpoint.provider_kind == PROVIDER_KIND


async def test_an_unusable_provider_is_its_clients_reason() -> None:
    kube = FakeKube()
    kube.cluster_objects[CLUSTER, "sso"] = provider(["ml"])
    with pytest.raises(OAuthError, match="ClusterOAuthProvider sso: set exactly one") as bad:
        await resolve(kube, parse(by_ref()))
    assert bad.value.reason == reasons.PROVIDER_INVALID


def test_an_empty_selector_selects_every_namespace() -> None:
    assert Selector().selects({})
    assert Selector().selects({"any": "label"})
