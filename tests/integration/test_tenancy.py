"""The trust boundary between tenants (README "Threat model"), against the real apiserver:
a tenant is a user bound to a Role with rights on oauthclients only (no Secret read, no pod
create, no TokenRequest), acting through impersonation; the operator runs under the chart's
RBAC with its default tenancy (shared). The tenant's own endpoint is a loopback server that
must receive nothing; the status, or admission, says why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration

TENANT = "tenant"


@pytest.fixture
def tenant(cluster: Cluster) -> str:
    """A user who may do anything with OAuthClients in the test's namespace, and nothing
    else: the Role a self-service platform or a GitOps setup hands out."""
    ns = cluster.namespace
    cluster.kubectl(
        "create", "role", "oauthclients-only", "-n", ns, "--verb=*",
        "--resource=oauthclients.oauth-token-operator.dev",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "tenant", "-n", ns, "--role=oauthclients-only", f"--user={TENANT}"
    )  # fmt: skip
    for verb, resource in (
        ("get", "secrets"),
        ("create", "pods"),
        ("create", "serviceaccounts/token"),
    ):
        answer = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", ns, f"--as={TENANT}", check=False
        )
        assert answer.stdout.strip() == "no", (verb, resource)
    return TENANT


def as_tenant(cluster: Cluster, obj: dict[str, Any]) -> Any:
    obj.setdefault("metadata", {})["namespace"] = cluster.namespace
    return cluster.kubectl("apply", f"--as={TENANT}", "-f", "-", input=json.dumps(obj), check=False)


def client(name: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "tokenEndpoint": endpoint,
            "clientAuthentication": "client_secret_post",
            "credentialsSecretRef": {"name": "creds"},
            **spec,
        },
    }


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            {"type": "kubernetes.io/service-account-token"},
            "spec.secret.type kubernetes.io/service-account-token and "
            "bootstrap.kubernetes.io/token are refused",
        ),
        (
            {"type": "bootstrap.kubernetes.io/token"},
            "spec.secret.type kubernetes.io/service-account-token and "
            "bootstrap.kubernetes.io/token are refused",
        ),
        (
            {"annotations": {"kubernetes.io/service-account.name": "billing"}},
            "spec.secret.annotations: keys starting kubernetes.io/service-account. are refused",
        ),
        (
            {"labels": {"kubernetes.io/service-account.name": "billing"}},
            "spec.secret.labels: keys starting kubernetes.io/service-account. are refused",
        ),
    ],
)
def test_admission_refuses_output_secrets_that_kubernetes_fills_with_credentials(
    cluster: Cluster, tenant: str, output: dict[str, Any], message: str
) -> None:
    result = as_tenant(cluster, client("mint", "https://127.0.0.1:9/token", secret=output))
    assert result.returncode != 0, "admitted"
    assert message in result.stderr
    assert cluster.get("oauthclient", "mint") is None
    # What is harmless still passes, for the same tenant.
    fine = {"type": "Opaque", "annotations": {"example.com/service-account.name": "x"}}
    assert (
        as_tenant(cluster, client("fine", "https://127.0.0.1:9/token", secret=fine)).returncode == 0
    )
