"""Two replicas with kopf peering (the chart's mode for replicas > 1): only one acts, so a
refresh token is never used by two processes at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helm import render_chart
from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster, eventually
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def test_only_one_of_two_peered_replicas_acts(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    docs = render_chart(
        "oto", cluster.namespace, "replicas=2", f"watchNamespaces={{{cluster.namespace}}}"
    )
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert crds and peerings, "replicas=2 must bring kopf peering"
    created = [d for d in crds if cluster.get("crd", d["metadata"]["name"]) is None]
    if created:
        # Removed again at the end, so that a later `helm install` of the chart can own them.
        request.addfinalizer(
            lambda: cluster.kubectl(
                "delete", "-f", "-", "--wait=true", input=yaml.safe_dump_all(created)
            )
        )
        cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all(created))
    for crd in crds:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}")
    cluster.kubectl("apply", "-n", cluster.namespace, "-f", "-", input=yaml.safe_dump_all(peerings))
    peering_name = peerings[0]["metadata"]["name"]

    identity_provider.reset_stats()
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    replicas = [
        OperatorProcess(
            cluster.cp.kubeconfig_path,
            cluster.namespace,
            tmp_path / f"replica-{i}.log",
            ("--peering", peering_name),
        )
        for i in range(2)
    ]
    for replica in replicas:
        replica.start()
    try:
        # Both must have seen each other before the object appears.
        eventually(
            lambda: any("Pausing" in r.logs() for r in replicas),
            timeout=30,
            what="one replica pausing in favour of the other",
        )
        cluster.apply(oauth_client("api", identity_provider.issuer, "creds"))
        cluster.wait_ready("api")
    finally:
        logs = [r.logs() for r in replicas]
        for replica in replicas:
            replica.stop()
    acted = [log for log in logs if "wrote a token" in log]
    assert len(acted) == 1, "exactly one replica may exchange and write"
    assert identity_provider.stats()["tokenRequests"] == 1
