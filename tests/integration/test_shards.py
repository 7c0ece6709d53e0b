"""Sharding: several operators, each with a label selector, split the OAuthClients between
them; each handles only its own, and a client relabelled to another shard moves there
without a new token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def labelled(name: str, shard: str, idp: IdentityProvider) -> dict[str, Any]:
    body = oauth_client(name, idp.issuer, "creds")
    body["metadata"]["labels"] = {"shard": shard}
    return body


def test_two_shards_split_the_clients_and_a_relabelled_one_moves(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    for name, label in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        cluster.apply(labelled(name, label, identity_provider))
    cluster.apply(oauth_client("nobody", identity_provider.issuer, "creds"))  # no label

    def shard(label: str) -> OperatorProcess:
        return OperatorProcess(
            control_plane.kubeconfig_path,
            cluster.namespace,
            tmp_path / f"shard-{label}.log",
            (f"--selector=shard={label}", f"--identity=shard-{label}"),
        )

    with shard("a") as a, shard("b") as b:
        for name in ("a1", "a2", "b1"):
            cluster.wait_ready(name)
        ns = cluster.namespace

        def handled(log: str, name: str) -> bool:
            return f"oauth_token_operator.engine.run: {ns}/{name}:" in log

        assert handled(a.logs(), "a1") and handled(a.logs(), "a2")
        assert not handled(a.logs(), "b1")
        assert handled(b.logs(), "b1")
        assert not handled(b.logs(), "a1") and not handled(b.logs(), "a2")
        # Matched by neither selector: nobody touches it.
        assert cluster.ready("nobody") is None
        assert cluster.secret_data("nobody-token") is None

        # a2 moves to shard b: b resumes it from its Secret, a lets it go.
        token = (cluster.secret_data("a2-token") or {})["access_token"]
        identity_provider.reset_stats()
        offset = len(b.logs())
        cluster.kubectl("label", "oauthclient", "a2", "shard=b", "--overwrite", "-n", ns)
        b.wait_for_log(f"oauth_token_operator.engine.run: {ns}/a2:", after=offset, timeout=30)
        assert (cluster.secret_data("a2-token") or {})["access_token"] == token
        assert identity_provider.stats()["tokenRequests"] == 0, json.dumps(
            identity_provider.stats()
        )


def test_a_selector_the_api_server_cannot_parse_stops_the_operator_with_a_reason(
    control_plane: ControlPlane, cluster: Cluster, tmp_path: Path
) -> None:
    process = OperatorProcess(
        control_plane.kubeconfig_path,
        cluster.namespace,
        tmp_path / "operator.log",
        ("--selector=shard in (a",),
    )
    with process:
        process.wait_for_log("--selector 'shard in (a'", timeout=30)
        eventually(lambda: not process.alive, timeout=30, what="the operator's exit")
