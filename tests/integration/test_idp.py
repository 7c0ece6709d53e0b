"""The test identity provider itself: the grants and behaviours the operator relies on."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from tests.support.idp import (
    CC_BASIC,
    CC_BASIC_SECRET,
    CC_POST,
    CC_POST_SECRET,
    DEFAULT_RESOURCE,
    RT_POST,
    RT_POST_SECRET,
    RT_PUBLIC,
    TEST_LOGIN,
    IdentityProvider,
    authorization_code_grant,
)

pytestmark = pytest.mark.integration

# Any port on the registered loopback redirect is accepted, as the CLI's listener will need.
REDIRECT_URI = "http://127.0.0.1:53682/callback"


@pytest.fixture
def http(identity_provider: IdentityProvider) -> Iterator[httpx.Client]:
    with identity_provider.http_client() as client:
        yield client


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_discovery(identity_provider: IdentityProvider) -> None:
    document = identity_provider.discovery
    assert document["issuer"] == identity_provider.issuer
    assert identity_provider.issuer.startswith("https://127.0.0.1:")
    assert document["token_endpoint"] == f"{identity_provider.issuer}/token"
    assert "client_credentials" in document["grant_types_supported"]


@pytest.mark.parametrize(
    ("client_id", "secret", "basic"),
    [(CC_BASIC, CC_BASIC_SECRET, True), (CC_POST, CC_POST_SECRET, False)],
)
def test_client_credentials_returns_jwt_with_exp(
    identity_provider: IdentityProvider,
    http: httpx.Client,
    client_id: str,
    secret: str,
    basic: bool,
) -> None:
    form = {"grant_type": "client_credentials", "scope": "openid email roles"}
    if basic:
        response = http.post(identity_provider.token_endpoint, data=form, auth=(client_id, secret))
    else:
        form |= {"client_id": client_id, "client_secret": secret}
        response = http.post(identity_provider.token_endpoint, data=form)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "openid email roles"
    token = claims(body["access_token"])
    assert token["client_id"] == client_id
    assert token["aud"] == DEFAULT_RESOURCE
    assert token["exp"] - token["iat"] == 3600


def test_wrong_secret_is_invalid_client(
    identity_provider: IdentityProvider, http: httpx.Client
) -> None:
    response = http.post(
        identity_provider.token_endpoint,
        data={"grant_type": "client_credentials"},
        auth=(CC_BASIC, "not-the-secret"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def login(identity_provider: IdentityProvider, http: httpx.Client, client_id: str) -> str:
    """Runs authorize → login → consent → code exchange; returns the first refresh token."""
    secret = RT_POST_SECRET if client_id == RT_POST else None
    body = authorization_code_grant(identity_provider, client_id, secret, REDIRECT_URI)
    assert claims(body["id_token"])["sub"] == TEST_LOGIN
    access = claims(body["access_token"])
    assert access["sub"] == TEST_LOGIN
    assert access["sub_type"] == "user"  # the extra authorize parameter made it through
    assert "exp" in access
    refresh_token: str = body["refresh_token"]
    return refresh_token


def refresh(
    identity_provider: IdentityProvider, http: httpx.Client, client_id: str, refresh_token: str
) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    if client_id == RT_POST:
        form["client_secret"] = RT_POST_SECRET
    return http.post(identity_provider.token_endpoint, data=form)


@pytest.mark.parametrize("client_id", [RT_PUBLIC, RT_POST])
def test_authorization_code_pkce_then_rotating_refresh(
    identity_provider: IdentityProvider, http: httpx.Client, client_id: str
) -> None:
    first = login(identity_provider, http, client_id)

    response = refresh(identity_provider, http, client_id, first)
    assert response.status_code == 200, response.text
    body = response.json()
    second = body["refresh_token"]
    assert second != first
    assert claims(body["access_token"])["sub_type"] == "user"

    reused = refresh(identity_provider, http, client_id, first)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"

    # Reuse detection revokes the whole grant: the newest refresh token is dead too, so a
    # client that retries a refresh whose response it lost has to log in again.
    after_reuse = refresh(identity_provider, http, client_id, second)
    assert after_reuse.status_code == 400
    assert after_reuse.json()["error"] == "invalid_grant"


def test_public_client_without_pkce_is_rejected(
    identity_provider: IdentityProvider, http: httpx.Client
) -> None:
    query = {
        "client_id": RT_PUBLIC,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
    }
    response = http.get(f"{identity_provider.authorization_endpoint}?{urlencode(query)}")
    assert response.is_redirect
    error = parse_qs(urlsplit(response.headers["location"]).query)
    assert error["error"] == ["invalid_request"]


def test_stats_count_token_requests(
    identity_provider: IdentityProvider, http: httpx.Client
) -> None:
    identity_provider.reset_stats()
    assert identity_provider.stats() == {
        "tokenRequests": 0,
        "byGrant": {"client_credentials": 0, "refresh_token": 0, "authorization_code": 0},
        "invalidGrant": 0,
        "invalidGrantReasons": {},
    }
    form = {"grant_type": "client_credentials"}
    http.post(identity_provider.token_endpoint, data=form, auth=(CC_BASIC, CC_BASIC_SECRET))
    http.post(identity_provider.token_endpoint, data=form, auth=(CC_BASIC, "wrong"))
    refresh(identity_provider, http, RT_PUBLIC, "no-such-token")

    stats = identity_provider.stats()
    assert stats["tokenRequests"] == 3
    assert stats["byGrant"]["client_credentials"] == 2  # the rejected one counts too
    assert stats["byGrant"]["refresh_token"] == 1
    assert stats["byGrant"]["authorization_code"] == 0
    assert stats["invalidGrant"] == 1  # the unknown refresh token
