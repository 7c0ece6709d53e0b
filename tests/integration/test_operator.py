"""The operator's main job, end to end: a real kube-apiserver, a real oidc-provider, the
operator as a separate process."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.cli import login
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane, _free_port
from tests.support.idp import (
    CC_BASIC,
    CC_BASIC_SECRET,
    CC_POST,
    CC_POST_SECRET,
    RT_POST,
    RT_POST_SECRET,
    IdentityProvider,
)
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

SCOPES = ["openid", "email", "roles"]


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def oauth_client(name: str, issuer: str, credentials: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "issuer": issuer,
            "credentialsSecretRef": {"name": credentials},
            "tls": {"caBundleSecretRef": {"name": "idp-ca"}},
            **spec,
        },
    }


def test_client_credentials_token_lands_in_owned_secret(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("app-creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(oauth_client("app", identity_provider.issuer, "app-creds", scopes=SCOPES))

    obj = cluster.wait_ready("app")

    data = cluster.secret_data("app-token")
    assert data is not None
    token_claims = claims(data["access_token"])
    assert token_claims["client_id"] == CC_BASIC
    assert set(SCOPES) <= set(token_claims["scope"].split())
    assert data["token_type"] == "Bearer"
    status = obj["status"]
    assert status["secretName"] == "app-token"
    assert status["expiresAt"] == data["expires_at"]
    assert abs(token_claims["exp"] - _epoch(status["expiresAt"])) <= 2
    assert status["consecutiveFailures"] == 0
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TokenIssued"

    secret = cluster.get("secret", "app-token")
    assert secret is not None
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "OAuthClient",
        "app",
        obj["metadata"]["uid"],
        True,
    )
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "oauth-token-operator"

    columns = cluster.kubectl("get", "oac", "app", "-n", cluster.namespace).stdout
    assert "READY" in columns and "True" in columns and "client_credentials" in columns
    assert cluster.events("app") == []  # a first token is no news: Ready=True says it


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_token_is_refreshed_before_it_expires(
    cluster: Cluster,
    short_lived_idp: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    cluster.apply(
        oauth_client(
            "short",
            short_lived_idp.issuer,
            "creds",
            clientAuthentication="client_secret_post",
            refresh={"minInterval": "1s", "renewBeforePercentage": 40},
        )
    )
    cluster.wait_ready("short")
    first = cluster.secret_data("short-token")
    assert first is not None

    def refreshed() -> dict[str, str] | None:
        data = cluster.secret_data("short-token")
        return data if data and data["access_token"] != first["access_token"] else None

    second = eventually(refreshed, timeout=30, what="a refreshed token")
    # Renewed while the first token was still valid: never late.
    assert claims(second["access_token"])["iat"] < claims(first["access_token"])["exp"]
    assert claims(second["access_token"])["exp"] > claims(first["access_token"])["exp"]


def test_refresh_token_rotation_is_persisted_and_never_reused(
    control_plane: ControlPlane,
    cluster: Cluster,
    short_lived_idp: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    result = login(cluster, short_lived_idp, tmp_path, "rt-creds", RT_POST, RT_POST_SECRET)
    assert result.returncode == 0, result.stderr
    assert "stored a refresh token" in result.stderr
    initial = cluster.secret_data("rt-creds")
    assert initial is not None and initial["client_id"] == RT_POST
    assert initial["refresh_token"] not in result.stderr + result.stdout

    cluster.apply(
        oauth_client(
            "user",
            short_lived_idp.issuer,
            "rt-creds",
            grantType="refresh_token",
            clientAuthentication="client_secret_post",
            refresh={"minInterval": "1s"},
            secret={"name": "user-token", "idTokenKey": "id_token"},
        )
    )
    cluster.wait_ready("user")
    seen = {initial["refresh_token"]}

    def rotated_again() -> str | None:
        current = (cluster.secret_data("rt-creds") or {}).get("refresh_token")
        return current if current and current not in seen else None

    # Each refresh rotates the refresh token; oidc-provider revokes the whole grant when an
    # old one is reused, so three successful rounds prove each rotated token was persisted
    # and the old one never sent again.
    for _ in range(3):
        seen.add(eventually(rotated_again, timeout=40, what="a rotated refresh token"))
        ready = cluster.ready("user")
        assert ready is not None and ready["status"] == "True", ready
    token = cluster.secret_data("user-token")
    assert token is not None
    assert claims(token["access_token"])["sub_type"] == "user"  # the login's extra parameter
    assert "id_token" in token


def test_restart_with_valid_tokens_makes_no_token_request(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    for name in ("a", "b", "c"):
        cluster.apply(oauth_client(name, identity_provider.issuer, "creds"))
    for name in ("a", "b", "c"):
        cluster.wait_ready(name)
    before = {n: cluster.secret_data(f"{n}-token") for n in ("a", "b", "c")}
    identity_provider.reset_stats()

    operator_process.kill()
    offset = len(operator_process.logs())
    operator_process.start()
    for name in ("a", "b", "c"):
        operator_process.wait_for_log(f"{cluster.namespace}/{name}: token in Secret", after=offset)

    assert identity_provider.stats()["tokenRequests"] == 0
    assert {n: cluster.secret_data(f"{n}-token") for n in ("a", "b", "c")} == before
    assert all(cluster.ready(n)["status"] == "True" for n in ("a", "b", "c"))  # type: ignore[index]


def test_invalid_client_needs_a_human_and_recovers_when_credentials_change(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": "wrong-secret"})
    identity_provider.reset_stats()
    cluster.apply(oauth_client("bad", identity_provider.issuer, "creds"))

    ready = cluster.wait_not_ready("bad")
    assert ready["reason"] == "InvalidClient"
    assert "invalid_client" in ready["message"]
    events = cluster.events("bad")
    assert any(e["reason"] == "InvalidClient" and e["type"] == "Warning" for e in events)
    time.sleep(8)  # no hot loop: one request, then a slow retry measured in minutes
    assert identity_provider.stats()["tokenRequests"] == 1
    assert cluster.get("oauthclient", "bad")["status"]["consecutiveFailures"] == 1  # type: ignore[index]
    assert "wrong-secret" not in json.dumps(cluster.get("oauthclient", "bad"))
    assert "wrong-secret" not in json.dumps(events)

    # Fixing the credentials Secret is picked up within seconds, not at the slow retry.
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.wait_ready("bad", timeout=15)
    assert cluster.ready("bad")["reason"] == "TokenIssued"  # type: ignore[index]


def test_secret_not_owned_is_left_untouched(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.create_secret("precious", {"keep": "me"})
    before = cluster.get("secret", "precious")
    cluster.apply(
        oauth_client("thief", identity_provider.issuer, "creds", secret={"name": "precious"})
    )

    assert cluster.wait_not_ready("thief")["reason"] == "SecretNotOwned"
    after = cluster.get("secret", "precious")
    assert after is not None and before is not None
    assert after["data"] == before["data"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_credentials_cannot_come_from_another_namespace(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    # The reference has no namespace field; the API server refuses one with kubectl's strict
    # field validation, so there is no way to name another namespace's Secret.
    obj = oauth_client("x", identity_provider.issuer, "creds")
    obj["spec"]["credentialsSecretRef"]["namespace"] = "kube-system"
    rejected = cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({**obj, "metadata": {"name": "x", "namespace": cluster.namespace}}),
        check=False,
    )
    assert rejected.returncode != 0
    assert 'unknown field "spec.credentialsSecretRef.namespace"' in rejected.stderr

    # A Secret of the same name in another namespace is not found from here.
    control_plane.kubectl(
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "default",
        f"--from-literal=client_id={CC_BASIC}",
        f"--from-literal=client_secret={CC_BASIC_SECRET}",
        check=False,
    )
    cluster.apply(oauth_client("x", identity_provider.issuer, "creds"))

    assert cluster.wait_not_ready("x")["reason"] == "CredentialsNotFound"
    assert cluster.get("secret", "x-token") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"tokenEndpoint": "https://example.test/token"},
            "set exactly one of spec.issuer (OpenID discovery), spec.tokenEndpoint or "
            "spec.providerRef",
        ),
        (
            {"clientAuthentication": "none"},
            "clientAuthentication 'none' (a public client) only works with grantType refresh_token",
        ),
        (
            {"extraParams": {"client_secret": "x"}},
            "extraParams must not set a parameter the operator sets itself",
        ),
        ({"secret": {"name": "creds"}}, "spec.secret.name must differ"),
        ({"refresh": {"renewBefore": "ten minutes"}}, "spec.refresh.renewBefore"),
        # What used to be admitted and failed, looped or corrupted the output later.
        ({"secret": {"name": "a..b"}}, "spec.secret.name"),
        ({"refresh": {"defaultLifetime": "0s"}}, "defaultLifetime must be at least 1m"),
        (
            {"secret": {"accessTokenKey": "token", "tokenTypeKey": "token"}},
            "must be different keys",
        ),
        ({"secret": {"expiresAtKey": "access_token"}}, "must be different keys"),
        ({"scopes": [f"s{i}" + "x" * 16000 for i in range(64)]}, "spec.scopes"),
        ({"credentialsSecretRef": {"name": "Bad_Name"}}, "spec.credentialsSecretRef.name"),
    ],
)
def test_admission_rejects_bad_specs_with_a_clear_message(
    cluster: Cluster, spec: dict[str, Any], message: str
) -> None:
    obj = oauth_client("bad", "https://idp.example.test", "creds", **spec)
    obj["metadata"]["namespace"] = cluster.namespace
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_admission_rejects_credentials_in_endpoint_urls(cluster: Cluster) -> None:
    for field in ("issuer", "tokenEndpoint"):
        obj = oauth_client("bad", "https://user:pw@idp.example.test/token", "creds")
        obj["spec"][field] = obj["spec"].pop("issuer")
        obj["metadata"]["namespace"] = cluster.namespace
        result = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
        assert result.returncode != 0
        assert f"{field} must not contain credentials" in result.stderr


def test_no_secret_value_in_operator_logs(
    control_plane: ControlPlane,
    cluster: Cluster,
    short_lived_idp: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    """Debug-level logs of a full cycle (login, exchanges, rotation, failures) hold none of
    the secrets involved."""
    assert (
        login(cluster, short_lived_idp, tmp_path, "rt-creds", RT_POST, RT_POST_SECRET).returncode
        == 0
    )
    cluster.create_secret("cc", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    cluster.create_secret("bad", {"client_id": CC_POST, "client_secret": "leaky-wrong-secret"})
    cluster.apply(
        oauth_client(
            "rt",
            short_lived_idp.issuer,
            "rt-creds",
            grantType="refresh_token",
            clientAuthentication="client_secret_post",
            refresh={"minInterval": "1s"},
        )
    )
    cluster.apply(
        oauth_client("cc", short_lived_idp.issuer, "cc", clientAuthentication="client_secret_post")
    )
    cluster.apply(
        oauth_client(
            "bad", short_lived_idp.issuer, "bad", clientAuthentication="client_secret_post"
        )
    )
    cluster.wait_ready("rt")
    cluster.wait_ready("cc")
    first_rt = (cluster.secret_data("rt-creds") or {})["refresh_token"]
    eventually(
        lambda: cluster.secret_data("rt-creds")["refresh_token"] != first_rt,  # type: ignore[index]
        timeout=40,
        what="a rotation",
    )

    secrets = {RT_POST_SECRET, CC_POST_SECRET, "leaky-wrong-secret", first_rt}
    for name in ("rt-creds", "rt-token", "cc-token"):
        secrets.update(v for v in (cluster.secret_data(name) or {}).values() if len(v) > 20)
    logs = operator_process.logs()
    assert "DEBUG" in logs  # the operator really logged at debug level
    leaked = [s[:6] + "…" for s in secrets if s in logs]
    assert not leaked, f"secret values found in operator logs: {leaked}"


def test_metrics_and_health_endpoints(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    metrics_port, health_port = _free_port(), _free_port()
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.create_secret("bad", {"client_id": CC_BASIC, "client_secret": "wrong"})
    cluster.apply(oauth_client("good", identity_provider.issuer, "creds"))
    cluster.apply(oauth_client("bad", identity_provider.issuer, "bad"))
    process = OperatorProcess(
        control_plane.kubeconfig_path,
        cluster.namespace,
        tmp_path / "operator.log",
        ("--metrics-port", str(metrics_port), "--health-port", str(health_port)),
    )
    with process:
        good = cluster.wait_ready("good")
        eventually(lambda: (cluster.ready("bad") or {}).get("status") == "False", timeout=30)
        health = eventually(lambda: _get(f"http://127.0.0.1:{health_port}/healthz"), timeout=10)
        assert health.status_code == 200
        metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metrics is not None
        text = metrics.text

        # The series for one deleted client go with it.
        cluster.kubectl("delete", "oauthclient", "good", "-n", cluster.namespace)

        def without_good() -> str | None:
            scraped = _get(f"http://127.0.0.1:{metrics_port}/metrics")
            return scraped.text if scraped and 'name="good"' not in scraped.text else None

        after: str = eventually(without_good, timeout=15, what="the deleted client's series gone")
    assert 'oauth_token_operator_exchanges_total{result="success"} 1.0' in text
    assert 'oauth_token_operator_exchanges_total{result="needs_human"} 1.0' in text
    assert "oauth_token_operator_clients 2.0" in text
    assert "oauth_token_operator_active 1.0" in text  # a lone replica acts
    assert 'oauth_token_operator_exchange_duration_seconds_count{result="success"} 1.0' in text

    def sample(name: str, client: str, extra: str = "") -> float:
        labels = f'name="{client}",namespace="{cluster.namespace}"{extra}'
        match = re.search(rf"^oauth_token_operator_{name}\{{{labels}\}} (\S+)$", text, re.M)
        assert match, f"{name} for {client} not in:\n{text}"
        return float(match.group(1))

    assert sample("client_ready", "good", ',reason="TokenIssued"') == 1.0
    assert sample("client_consecutive_failures", "good") == 0.0
    expires = sample("token_expiration_timestamp_seconds", "good")
    assert abs(expires - _epoch(good["status"]["expiresAt"])) < 1  # status has whole seconds
    assert sample("token_issued_timestamp_seconds", "good") < sample(
        "token_expiration_timestamp_seconds", "good"
    )
    assert (
        abs(
            sample("next_refresh_timestamp_seconds", "good")
            - _epoch(good["status"]["nextRefreshTime"])
        )
        <= 1
    )
    assert sample("client_ready", "bad", ',reason="InvalidClient"') == 0.0
    assert sample("client_consecutive_failures", "bad") >= 1.0
    assert sample("client_needs_login", "bad") == 0.0
    assert 'name="bad"' in after


def test_listen_address_keeps_the_listeners_on_that_address(
    control_plane: ControlPlane, cluster: Cluster, tmp_path: Path
) -> None:
    """127.0.0.2 is on the loopback interface too: a listener bound to all addresses (the
    default) answers there, one bound to 127.0.0.1 does not."""
    metrics_port, health_port = _free_port(), _free_port()
    process = OperatorProcess(
        control_plane.kubeconfig_path,
        cluster.namespace,
        tmp_path / "operator.log",
        (
            "--listen-address=127.0.0.1",
            f"--metrics-port={metrics_port}",
            f"--health-port={health_port}",
        ),
    )
    with process:
        for where in (f"{health_port}/healthz", f"{metrics_port}/metrics"):
            url = f"http://127.0.0.1:{where}"
            bound = eventually(lambda url=url: _get(url), timeout=20)  # type: ignore[misc]
            assert bound.status_code == 200
            assert _get(f"http://127.0.0.2:{where}") is None


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def test_deleted_token_secret_and_spec_changes_are_acted_on_at_once(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(oauth_client("api", identity_provider.issuer, "creds", scopes=["openid"]))
    cluster.wait_ready("api")

    cluster.kubectl("delete", "secret", "api-token", "-n", cluster.namespace)
    recreated = eventually(
        lambda: cluster.secret_data("api-token"), timeout=15, what="the deleted token Secret back"
    )
    assert claims(recreated["access_token"])["client_id"] == CC_BASIC

    # A scope change needs a new token now, not at the next scheduled refresh.
    cluster.apply(
        oauth_client("api", identity_provider.issuer, "creds", scopes=["openid", "email"])
    )
    widened = eventually(
        lambda: (
            "email"
            in claims((cluster.secret_data("api-token") or {}).get("access_token", "a.e30.c")).get(
                "scope", ""
            )
        ),
        timeout=15,
        what="a token with the new scope",
    )
    assert widened
    obj = cluster.get("oauthclient", "api")
    assert obj is not None
    eventually(
        lambda: (
            (cluster.get("oauthclient", "api") or {}).get("status", {}).get("observedGeneration")
            == obj["metadata"]["generation"]
        ),
        timeout=10,
    )
