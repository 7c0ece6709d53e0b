"""The `login` and `token` commands against the real provider and API server."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from tests.integration.test_operator import oauth_client
from tests.support.cli import cli, login
from tests.support.cluster import Cluster
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, RT_PUBLIC, IdentityProvider

pytestmark = pytest.mark.integration


def test_token_prints_what_was_granted_and_the_token_only_on_request(
    cluster: Cluster, identity_provider: IdentityProvider, idp_ca_secret: str
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(oauth_client("api", identity_provider.issuer, "creds", scopes=["openid"]))

    quiet = cli(cluster, "token", "api", "-n", cluster.namespace)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""  # no token unless asked for
    summary = json.loads(quiet.stderr)
    assert summary["tokenType"] == "Bearer"
    assert summary["claims"]["client_id"] == CC_BASIC
    assert summary["refreshTokenRotated"] is False
    assert CC_BASIC_SECRET not in quiet.stderr

    shown = cli(cluster, "token", "api", "-n", cluster.namespace, "--print-token")
    token = shown.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["client_id"] == CC_BASIC and "openid" in claims["scope"]


def test_token_reports_provider_errors_without_secrets(
    cluster: Cluster, identity_provider: IdentityProvider, idp_ca_secret: str
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": "not-the-secret"})
    cluster.apply(oauth_client("api", identity_provider.issuer, "creds"))
    result = cli(cluster, "token", "api", "-n", cluster.namespace)
    assert result.returncode == 1
    assert "InvalidClient" in result.stderr
    assert "not-the-secret" not in result.stderr + result.stdout

    missing = cli(cluster, "token", "nope", "-n", cluster.namespace)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_public_client_login_then_token_persists_the_rotated_refresh_token(
    cluster: Cluster, identity_provider: IdentityProvider, idp_ca_secret: str, tmp_path: Path
) -> None:
    result = login(cluster, identity_provider, tmp_path, "pub-creds", RT_PUBLIC)
    assert result.returncode == 0, result.stderr
    assert "code_challenge_method=S256" in result.stderr  # PKCE
    assert "sub_type=user" in result.stderr  # extra authorize parameter passed through
    stored = cluster.secret_data("pub-creds")
    assert stored is not None
    assert stored["client_id"] == RT_PUBLIC and "client_secret" not in stored
    assert stored["refresh_token"] not in result.stderr

    cluster.apply(
        oauth_client(
            "pub",
            identity_provider.issuer,
            "pub-creds",
            grantType="refresh_token",
            clientAuthentication="none",
        )
    )
    first = cli(cluster, "token", "pub", "-n", cluster.namespace, "--print-token")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stderr)["refreshTokenRotated"] is True
    rotated = cluster.secret_data("pub-creds")
    assert rotated is not None and rotated["refresh_token"] != stored["refresh_token"]
    assert (
        jwt.decode(first.stdout.strip(), options={"verify_signature": False})["sub_type"] == "user"
    )
    # The persisted token works: the provider would revoke the grant on reuse of the old one.
    second = cli(cluster, "token", "pub", "-n", cluster.namespace)
    assert second.returncode == 0, second.stderr
