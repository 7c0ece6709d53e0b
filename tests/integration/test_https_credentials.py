"""Every credential goes only over https, also where the endpoint came from discovery and
the operator runs with --allow-http (meant for in-cluster providers): a discovery document
at an https issuer that names a plain-http token endpoint gets no subject token, whether it
comes from a Secret or is a minted ServiceAccount token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.attacker import Attacker
from tests.support.cluster import Cluster
from tests.support.controlplane import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.pki import TestCA

pytestmark = pytest.mark.integration

AUDIENCES = "oauth-token-operator.dev/token-audiences"
ENDPOINTS = "oauth-token-operator.dev/token-endpoints"


@pytest.fixture
def allow_http_operator(
    control_plane: ControlPlane, cluster: Cluster, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        control_plane.kubeconfig_path,
        cluster.namespace,
        tmp_path / "operator.log",
        ("--allow-http",),
    )
    with process:
        yield process


def exchange_client(name: str, issuer: str, subject: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "issuer": issuer,
            "grantType": "token_exchange",
            "clientAuthentication": "client_secret_post",
            "credentialsSecretRef": {"name": "creds"},
            "tokenExchange": {"subjectToken": subject},
            "tls": {"caBundleSecretRef": {"name": "idp-ca"}},
        },
    }


def test_no_subject_token_goes_to_a_plain_http_endpoint_named_by_discovery(
    cluster: Cluster,
    test_ca: TestCA,
    idp_ca_secret: str,
    allow_http_operator: OperatorProcess,
) -> None:
    with Attacker(test_ca) as issuer, Attacker(None) as plain:
        issuer.serve_discovery({"issuer": issuer.url, "token_endpoint": f"{plain.url}/token"})
        cluster.create_secret("creds", {"client_id": "c", "client_secret": "client-s3cret"})
        cluster.create_secret("subject", {"token": "subject-t0ken"})
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {
                    "name": "billing",
                    "annotations": {AUDIENCES: "https://sso.example", ENDPOINTS: issuer.url},
                },
            }
        )
        from_secret = {"secretKeyRef": {"name": "subject", "key": "token"}}
        from_account = {
            "serviceAccountToken": {
                "serviceAccountName": "billing",
                "audience": "https://sso.example",
            }
        }
        cluster.apply(exchange_client("from-secret", issuer.url, from_secret))
        cluster.apply(exchange_client("from-account", issuer.url, from_account))

        for name in ("from-secret", "from-account"):
            ready = cluster.wait_not_ready(name)
            assert ready["reason"] == "EndpointNotAllowed", ready
            assert "only presented over https" in ready["message"]
        assert plain.received == []
        assert issuer.posts() == []
        assert cluster.get("secret", "from-secret-token") is None
    logs = allow_http_operator.logs()
    assert "subject-t0ken" not in logs and "client-s3cret" not in logs


def test_admission_refuses_a_subject_token_from_a_secret_towards_http(cluster: Cluster) -> None:
    client = exchange_client(
        "plain", "https://127.0.0.1:9", {"secretKeyRef": {"name": "subject", "key": "token"}}
    )
    del client["spec"]["issuer"]
    client["spec"]["tokenEndpoint"] = "http://127.0.0.1:9/token"
    client["metadata"]["namespace"] = cluster.namespace
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(client), check=False)
    assert result.returncode != 0
    assert "a subject token (token exchange) is only sent over https" in result.stderr
