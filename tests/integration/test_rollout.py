"""Rollout targets against the real API server: two clients naming one Deployment restart it
once (one pod-template change), with each client's token hash."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster, eventually
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

KEY = "token.oauth-token-operator.dev/"


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def test_two_clients_restart_their_deployment_once(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.apply(deployment("web"))
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    targets = [{"kind": "Deployment", "name": "web"}]
    for name in ("api", "billing"):
        client = oauth_client(name, identity_provider.issuer, "creds", rolloutTargets=targets)
        cluster.apply(client)
    for name in ("api", "billing"):
        cluster.wait_ready(name)

    def restarted() -> dict[str, Any] | None:
        web = cluster.get("deployment", "web")
        annotations = (web or {})["spec"]["template"]["metadata"].get("annotations") or {}
        return web if len(annotations) == 2 else None

    web = eventually(restarted, timeout=30, what="web restarted")
    annotations = web["spec"]["template"]["metadata"]["annotations"]
    for name in ("api", "billing"):
        data = cluster.secret_data(f"{name}-token")
        assert data is not None
        digest = hashlib.sha256(data["access_token"].encode()).hexdigest()[:16]
        assert annotations[KEY + name] == digest
    assert web["metadata"]["generation"] == 2  # one template change for both tokens
    events = cluster.events("api") + cluster.events("billing")
    assert sum(e["reason"] == "RolloutRestarted" for e in events) == 2


def test_a_missing_target_is_a_warning_event(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    targets = [{"kind": "StatefulSet", "name": "absent"}]
    cluster.apply(oauth_client("api", identity_provider.issuer, "creds", rolloutTargets=targets))
    cluster.wait_ready("api")
    warning = eventually(
        lambda: next(
            (e for e in cluster.events("api") if e["reason"] == "RolloutTargetNotFound"), None
        ),
        timeout=30,
        what="a RolloutTargetNotFound event",
    )
    assert warning["type"] == "Warning"
    assert "StatefulSet absent not found" in warning["message"]
