"""Two replicas with kopf peering (the chart's mode for replicas > 1): only one acts, so a
refresh token is never used by two processes at once."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from tests.helm import render_chart
from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster, eventually
from tests.support.idp import (
    CC_BASIC,
    CC_BASIC_SECRET,
    CC_POST,
    CC_POST_SECRET,
    IdentityProvider,
)
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def install_peering(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """kopf's peering CRDs from the chart; the peering name. The operator creates the
    KopfPeering itself."""
    docs = render_chart(
        "oto", cluster.namespace, "replicas=2", f"watchNamespaces={{{cluster.namespace}}}"
    )
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crds, "replicas=2 must bring kopf peering"
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
    assert cluster.get("kopfpeering.kopf.dev", "oauth-token-operator") is None
    return "oauth-token-operator"


def replica(cluster: Cluster, tmp_path: Path, name: str, peering: str) -> OperatorProcess:
    return OperatorProcess(
        cluster.cp.kubeconfig_path,
        cluster.namespace,
        tmp_path / f"{name}.log",
        ("--peering", peering, "--propagation-margin", "5s"),
    )


def test_only_one_of_two_peered_replicas_acts(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    peering_name = install_peering(cluster, request)
    identity_provider.reset_stats()
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    replicas = [replica(cluster, tmp_path, f"replica-{i}", peering_name) for i in range(2)]
    for process in replicas:
        process.start()
    try:
        # Both must have seen each other before the object appears.
        eventually(
            lambda: any("standing by" in r.logs() for r in replicas),
            timeout=30,
            what="one replica pausing in favour of the other",
        )
        cluster.apply(oauth_client("api", identity_provider.issuer, "creds"))
        cluster.wait_ready("api")
    finally:
        logs = [r.logs() for r in replicas]
        for process in replicas:
            process.stop()
    acted = [log for log in logs if "wrote a token" in log]
    assert len(acted) == 1, "exactly one replica may exchange and write"
    assert identity_provider.stats()["tokenRequests"] == 1


def test_the_standby_replica_stays_idle_and_takes_over_when_the_active_one_stops(
    cluster: Cluster,
    short_lived_idp: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The first replica acts and a later one stands by (a scale-up does not move the
    work); the standby exchanges nothing, not even for clients refreshed under its eyes,
    forgets clients deleted meanwhile, and takes over within seconds of a stop."""
    peering_name = install_peering(cluster, request)
    cluster.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    fast = {"minInterval": "1s", "renewBeforePercentage": 40}  # 20 s tokens: every ~12 s
    first = replica(cluster, tmp_path, "first", peering_name).start()
    second = replica(cluster, tmp_path, "second", peering_name)
    request.addfinalizer(first.stop)
    request.addfinalizer(second.stop)
    first.wait_for_log("starting")
    time.sleep(2)  # the first one's peering entry is written before the second starts
    second.start()
    second.wait_for_log("standing by")
    for name in ("a", "b", "gone"):
        cluster.apply(
            oauth_client(
                name,
                short_lived_idp.issuer,
                "creds",
                clientAuthentication="client_secret_post",
                refresh=fast,
            )
        )
    for name in ("a", "b", "gone"):
        cluster.wait_ready(name)
    wrote_a = f"{cluster.namespace}/a: wrote a token"
    wrote_b = f"{cluster.namespace}/b: wrote a token"
    # Stopped just after a and b were refreshed, so that neither is due at the handover.
    eventually(
        lambda: first.logs().count(wrote_a) >= 2 and first.logs().count(wrote_b) >= 2,
        timeout=30,
        what="a refresh of a and of b",
    )
    cluster.kubectl("delete", "-n", cluster.namespace, "oauthclient", "gone")
    gone_token = cluster.secret_data("gone-token")  # no controller-manager here to collect it

    assert "wrote a token" not in second.logs()
    assert "Pausing operations" not in first.logs() and "standing by" not in first.logs()
    offset = len(second.logs())
    assert first.terminate() == 0
    stopped = time.monotonic()
    second.wait_for_log("taking over from the peers", after=offset, timeout=30)
    took_over = time.monotonic() - stopped
    for name in ("a", "b"):  # taking over, it resumes from the Secrets: no exchange
        second.wait_for_log(f"{cluster.namespace}/{name}: token in Secret", after=offset)
    second.wait_for_log(wrote_a, after=offset, timeout=30)
    refreshed = time.monotonic() - stopped
    print(f"\nhandover: took over {took_over:.1f}s, first refresh {refreshed:.1f}s after the stop")

    time.sleep(3)
    # Not one line of the operator's about the client (kopf's "[ns/gone-token]" prefix on
    # the Secret's events is not the client).
    about_gone = rf"(?<!\[){re.escape(cluster.namespace)}/gone(?![-\w])"
    assert not re.search(about_gone, second.logs()[offset:])
    assert cluster.secret_data("gone-token") == gone_token
    for name in ("a", "b"):
        assert cluster.ready(name)["status"] == "True"  # type: ignore[index]
