"""The operator does its whole job under exactly the RBAC the chart grants: it runs with a
client certificate whose user name is the chart's service account, so the chart's own
(Cluster)RoleBindings apply unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm import render_chart
from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def under_chart_rbac(
    cluster: Cluster, release: str, prefix: str, *values: str
) -> tuple[Path, list[dict[str, Any]]]:
    """Applies the chart's RBAC (namespaced mode, watching the test's namespace; `values`
    more --set values) for a release in a namespace of its own, and returns a kubeconfig of
    the chart's ServiceAccount and the RBAC objects applied."""
    release_ns = prefix + cluster.namespace[1:]  # short: the user name is a 64-char CN
    cluster.kubectl("create", "namespace", release_ns)
    docs = render_chart(release, release_ns, f"watchNamespaces={{{cluster.namespace}}}", *values)
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    account = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = cluster.cp.user_kubeconfig(
        f"system:serviceaccount:{release_ns}:{account}",
        ("system:serviceaccounts", f"system:serviceaccounts:{release_ns}"),
    )
    return kubeconfig, rbac


def test_operator_works_under_the_charts_namespaced_rbac(
    cluster: Cluster, identity_provider: IdentityProvider, idp_ca_secret: str, tmp_path: Path
) -> None:
    kubeconfig, rbac = under_chart_rbac(cluster, "oto", "op")
    assert {d["kind"] for d in rbac} >= {"ServiceAccount", "Role", "RoleBinding"}
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    # Template values from a ConfigMap: the chart lets the operator read it.
    cluster.kubectl(
        "create",
        "configmap",
        "api-settings",
        "-n",
        cluster.namespace,
        "--from-literal=audience=billing",
    )
    templated = {"templates": {"who": "{{ values.audience }}"}}
    templated["valuesFrom"] = {"configMapName": "api-settings"}
    cluster.apply(oauth_client("api", identity_provider.issuer, "creds", secret=templated))
    # A client that fails: its Warning Event proves the chart lets the operator post Events.
    cluster.create_secret("wrong", {"client_id": CC_BASIC, "client_secret": "not-it"})
    cluster.apply(oauth_client("failing", identity_provider.issuer, "wrong"))

    with OperatorProcess(kubeconfig, cluster.namespace, tmp_path / "operator.log") as operator:
        cluster.wait_ready("api")
        data = cluster.secret_data("api-token")
        assert data is not None and data["who"] == "billing"
        assert cluster.wait_not_ready("failing")["reason"] == "InvalidClient"
        assert any(e["reason"] == "InvalidClient" for e in cluster.events("failing"))
        logs = operator.logs()
    assert "403" not in logs and "Forbidden" not in logs, logs[-3000:]
