"""spec.providerRef and ClusterOAuthProviders: parsing, and what a provider lets a client of
a namespace use (over the fake Kubernetes API)."""

from __future__ import annotations

from typing import Any

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.oauth import OAuthError
from oauth_token_operator.providers import PROVIDER_PLURAL, endpoint_of, resolve
from oauth_token_operator.spec import Endpoint, SpecError, parse
from tests.unit.test_refresher import FakeKube
from tests.unit.test_spec import body

ISSUER = "https://sso.example/realms/apps"


def by_ref(**spec: Any) -> dict[str, Any]:
    obj = body(providerRef={"kind": "ClusterOAuthProvider", "name": "sso"})
    del obj["spec"]["issuer"]
    obj["spec"].update(spec)
    return obj


def test_a_provider_ref_is_the_endpoint() -> None:
    assert parse(by_ref()).request.endpoint == Endpoint(provider="sso")


@pytest.mark.parametrize("extra", [{"issuer": ISSUER}, {"tokenEndpoint": ISSUER + "/token"}])
def test_a_provider_ref_excludes_inline_endpoints(extra: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match="exactly one of"):
        parse(by_ref(**extra))


def provider(namespaces: Any, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "sso"}, "spec": {"namespaces": namespaces, **spec}}


@pytest.mark.parametrize(
    ("obj", "namespace", "result"),
    [
        (provider(["ml"], issuer=ISSUER), "ml", Endpoint(issuer=ISSUER, provider="sso")),
        (provider(["*"], issuer=ISSUER), "any", Endpoint(issuer=ISSUER, provider="sso")),
        (
            provider(["ml"], tokenEndpoint=ISSUER + "/t"),
            "ml",
            Endpoint(token_endpoint=ISSUER + "/t", provider="sso"),
        ),
        (provider(["other"], issuer=ISSUER), "ml", reasons.PROVIDER_NOT_ALLOWED),
        (provider([], issuer=ISSUER), "ml", reasons.PROVIDER_NOT_ALLOWED),
        (provider(None, issuer=ISSUER), "ml", reasons.PROVIDER_NOT_ALLOWED),
        (provider(["ml"]), "ml", reasons.PROVIDER_NOT_FOUND),
        (provider(["ml"], issuer="ftp://x"), "ml", reasons.PROVIDER_NOT_FOUND),
        (provider(["ml"], issuer=ISSUER, tokenEndpoint=ISSUER), "ml", reasons.PROVIDER_NOT_FOUND),
    ],
)
def test_what_a_provider_lets_a_namespace_use(
    obj: dict[str, Any], namespace: str, result: Endpoint | str
) -> None:
    if isinstance(result, Endpoint):
        assert endpoint_of(obj, "sso", namespace) == result
        return
    with pytest.raises(OAuthError) as refused:
        endpoint_of(obj, "sso", namespace)
    assert refused.value.reason == result


async def test_resolve_puts_the_providers_endpoint_in_place_and_changes_the_hash() -> None:
    kube = FakeKube()
    spec = parse(by_ref())
    with pytest.raises(OAuthError) as missing:
        await resolve(kube, spec)
    assert missing.value.reason == reasons.PROVIDER_NOT_FOUND
    kube.cluster_objects[PROVIDER_PLURAL, "sso"] = provider(["ml"], issuer=ISSUER)
    first = await resolve(kube, spec)
    assert first.request.endpoint == Endpoint(issuer=ISSUER, provider="sso")
    kube.cluster_objects[PROVIDER_PLURAL, "sso"] = provider(["ml"], issuer=ISSUER + "/v2")
    second = await resolve(kube, spec)
    assert first.spec_hash != second.spec_hash  # a provider edit gets a new token
    assert await resolve(kube, parse(body())) == parse(body())  # inline: as is
