"""Keyless client authentication against a real provider: the operator mints a token of a
ServiceAccount (TokenRequest on the real apiserver) and Keycloak accepts it as the client
assertion after checking it against the apiserver's own discovery document and JWKS. And
what must never be minted: for a ServiceAccount that did not opt in, for an audience the
apiserver accepts, for another namespace, towards a plain-http endpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from tests.integration.test_operator import oauth_client
from tests.integration.test_rbac import under_chart_rbac
from tests.paths import EXAMPLES
from tests.support.cli import cli
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.keycloak import Keycloak
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

AUDIENCES_ANNOTATION = "oauth-token-operator.dev/token-audiences"


def service_account(cluster: Cluster, name: str, audiences: str | None) -> None:
    annotations = {AUDIENCES_ANNOTATION: audiences} if audiences is not None else {}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "annotations": annotations},
        }
    )


def keyless_client(
    name: str, issuer: str, account: str, audience: str, client_id: str = "x"
) -> dict[str, Any]:
    """No Secret at all: the client ID is in the spec."""
    client = oauth_client(
        name,
        issuer,
        "",
        clientAuthentication="service_account_token",
        serviceAccountToken={"serviceAccountName": account, "audience": audience},
        clientId=client_id,
    )
    del client["spec"]["credentialsSecretRef"]
    return client


def tokens_minted(control_plane: ControlPlane) -> int:
    """TokenRequests the apiserver answered (apiserver_request_total)."""
    metrics = control_plane.kubectl("get", "--raw", "/metrics").stdout
    pattern = re.compile(
        r'^apiserver_request_total\{(?=[^}]*resource="serviceaccounts")'
        r'(?=[^}]*subresource="token")(?=[^}]*verb="POST")[^}]*\} (\d+)',
        re.M,
    )
    return sum(int(n) for n in pattern.findall(metrics))


def test_a_service_account_token_authenticates_the_client_at_keycloak(
    cluster: Cluster,
    control_plane: ControlPlane,
    keycloak: Keycloak,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    client_id = f"keyless-{cluster.namespace}"
    keycloak.add_client(client_id, cluster.namespace, "app")
    service_account(cluster, "app", f"https://unrelated.example,{keycloak.issuer}")
    minted = tokens_minted(control_plane)
    cluster.apply(keyless_client("app", keycloak.issuer, "app", keycloak.issuer, client_id))

    cluster.wait_ready("app", timeout=60)

    data = cluster.secret_data("app-token")
    assert data is not None
    claims = jwt.decode(data["access_token"], options={"verify_signature": False})
    assert claims["azp"] == client_id
    assert claims["iss"] == keycloak.issuer
    assert tokens_minted(control_plane) > minted  # counted where the other test counts none

    # The `token` command takes the same path (as whoever runs it, here the admin).
    result = cli(cluster, "token", "app", "-n", cluster.namespace)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr)["claims"]["azp"] == client_id
    assert "eyJ" not in result.stderr
    # Neither the ServiceAccount token nor any other JWT is ever logged.
    assert "eyJ" not in operator_process.logs()


def test_the_charts_rbac_with_service_account_tokens_enabled_is_enough(
    cluster: Cluster, keycloak: Keycloak, idp_ca_secret: str, tmp_path: Path
) -> None:
    """The operator as the chart's ServiceAccount, namespaced mode: it may read the
    ServiceAccount, mint its token and review it, and nothing more is needed."""
    kubeconfig, rbac = under_chart_rbac(cluster, "otokl", "kl", "serviceAccountTokens.enabled=true")
    client_id = f"rbac-{cluster.namespace}"
    keycloak.add_client(client_id, cluster.namespace, "app")
    service_account(cluster, "app", keycloak.issuer)
    # The client ID in a Secret this time: the chart lets the operator read that too.
    cluster.create_secret("app-id", {"client_id": client_id})
    client = keyless_client("app", keycloak.issuer, "app", keycloak.issuer)
    del client["spec"]["clientId"]
    client["spec"]["credentialsSecretRef"] = {"name": "app-id"}
    cluster.apply(client)
    try:
        with OperatorProcess(kubeconfig, cluster.namespace, tmp_path / "op.log") as operator:
            cluster.wait_ready("app", timeout=60)
            logs = operator.logs()
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)
    assert "403" not in logs and "Forbidden" not in logs, logs[-3000:]


def test_nothing_is_minted_without_opt_in_or_for_the_apiserver(
    cluster: Cluster,
    control_plane: ControlPlane,
    keycloak: Keycloak,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    service_account(cluster, "silent", None)
    service_account(cluster, "other-provider", "https://unrelated.example")
    service_account(cluster, "api", control_plane.server)  # opted in, but to the apiserver
    before = tokens_minted(control_plane)
    cases = {
        "silent": ("silent", keycloak.issuer, "ServiceAccountNotOptedIn"),
        "other": ("other-provider", keycloak.issuer, "ServiceAccountNotOptedIn"),
        "missing": ("nobody", keycloak.issuer, "ServiceAccountNotFound"),
        "api": ("api", control_plane.server, "AudienceNotAllowed"),
    }
    for name, (account, audience, _) in cases.items():
        cluster.apply(keyless_client(name, keycloak.issuer, account, audience))

    for name, (_, _, reason) in cases.items():
        condition = cluster.wait_not_ready(name)
        assert condition["reason"] == reason, condition
    assert tokens_minted(control_plane) == before
    assert "not opted in" in cluster.ready("silent")["message"]  # type: ignore[index]


def test_admission_refuses_other_namespaces_apiserver_audiences_and_http(
    cluster: Cluster,
) -> None:
    def refused(**token: Any) -> str:
        client = keyless_client("a", "https://idp.example", "app", "https://idp.example")
        client["spec"]["serviceAccountToken"].update(token)
        client["metadata"]["namespace"] = cluster.namespace
        result = cluster.kubectl("apply", "-f", "-", input=json.dumps(client), check=False)
        assert result.returncode != 0
        return str(result.stderr)

    assert "own namespace" in refused(serviceAccountName="kube-system/default")
    assert "own namespace" in refused(serviceAccountName="system:serviceaccount:x:y")
    assert "Kubernetes API accepts" in refused(audience="https://kubernetes.default.svc")
    assert "600" in refused(expirationSeconds=60)
    plain = keyless_client("b", "http://idp.example", "app", "https://idp.example")
    plain["metadata"]["namespace"] = cluster.namespace
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(plain), check=False)
    assert result.returncode != 0 and "only sent over https" in result.stderr
    # spec.clientId stands in for the Secret only where the credential is not a secret.
    secret_auth = keyless_client("c", "https://idp.example", "app", "https://idp.example")
    secret_auth["spec"]["clientAuthentication"] = "client_secret_basic"
    del secret_auth["spec"]["serviceAccountToken"]
    secret_auth["metadata"]["namespace"] = cluster.namespace
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(secret_auth), check=False)
    assert result.returncode != 0 and "spec.clientId (no credentials Secret)" in result.stderr


def test_token_exchange_at_keycloak_follows_the_subject_token_in_its_secret(
    cluster: Cluster,
    keycloak: Keycloak,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    """RFC 8693 with Keycloak's standard token exchange: the subject token comes from a
    Secret; a new subject token there gets a token for the new subject within seconds."""
    ns = cluster.namespace
    requester, subjects = f"exchanger-{ns}", (f"alice-{ns}", f"bob-{ns}")
    keycloak.add_secret_client(requester, "requester-secret", token_exchange=True)
    for subject in subjects:
        keycloak.add_secret_client(subject, f"{subject}-secret", audience_for=requester)
    alice, bob = (keycloak.client_credentials_token(s, f"{s}-secret") for s in subjects)
    cluster.create_secret(
        "requester", {"client_id": requester, "client_secret": "requester-secret"}
    )
    cluster.create_secret("subject", {"token": alice})
    client = oauth_client(
        "exchanged",
        keycloak.issuer,
        "requester",
        grantType="token_exchange",
        tokenExchange={"subjectToken": {"secretKeyRef": {"name": "subject", "key": "token"}}},
    )
    cluster.apply(client)

    cluster.wait_ready("exchanged", timeout=60)

    def issued() -> dict[str, Any]:
        data = cluster.secret_data("exchanged-token") or {}
        return dict(jwt.decode(data["access_token"], options={"verify_signature": False}))

    def sub(token: str) -> str:
        return str(jwt.decode(token, options={"verify_signature": False})["sub"])

    first = issued()
    assert first["azp"] == requester and first["sub"] == sub(alice)

    cluster.create_secret("subject", {"token": bob})  # replaced
    eventually(lambda: issued()["sub"] == sub(bob), timeout=20, what="a token for bob")
    assert "eyJ" not in operator_process.logs()


@pytest.mark.parametrize(
    "example",
    [
        "keyless.yaml",
        "token-exchange.yaml",
        "cluster-provider.yaml",
        "tenant-client.yaml",
        "namespace-provider.yaml",
    ],
)
def test_the_examples_pass_admission(cluster: Cluster, example: str) -> None:
    path = EXAMPLES / example
    # The examples name their namespaces (team-a): put them in the test's own.
    text = path.read_text().replace("namespace: team-a", f"namespace: {cluster.namespace}")
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", cluster.namespace, "-f", "-", input=text, check=False
    )
    assert result.returncode == 0, result.stderr
