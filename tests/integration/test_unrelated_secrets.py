"""In a cluster crowded with Secrets that are none of the operator's business: a rotated
credentials Secret is still used within seconds, and the unrelated Secrets' bodies never
travel to the operator (counted by the kube-apiserver's own metrics)."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider, default_clients
from tests.support.operator_process import OperatorProcess
from tests.support.pki import TestCA

pytestmark = pytest.mark.integration

NEXT_CLIENT, NEXT_SECRET = "cc-basic-next", "cc-basic-next-secret"
CROWD, CROWD_BYTES = 24, 700_000  # ~22 MB of Secret data (~0.9 MB each in base64)


@pytest.fixture(scope="module")
def two_client_idp(test_ca: TestCA) -> Iterator[IdentityProvider]:
    """The default clients and one more like CC_BASIC: credentials to rotate to."""
    basic = next(c for c in default_clients() if c["client_id"] == CC_BASIC)
    clients = [
        *default_clients(),
        {**basic, "client_id": NEXT_CLIENT, "client_secret": NEXT_SECRET},
    ]
    with IdentityProvider(test_ca, clients) as idp:
        yield idp


def crowd(cluster: Cluster, verb: str) -> None:
    """CROWD unlabelled Secrets of CROWD_BYTES random bytes each, like Helm releases; kubectl
    create/replace, since apply's annotation would hold a copy of each."""
    items = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"sh.helm.release.v1.app{i}.v1", "labels": {"owner": "helm"}},
            "type": "helm.sh/release.v1",
            "data": {"release": base64.b64encode(os.urandom(CROWD_BYTES)).decode()},
        }
        for i in range(CROWD)
    ]
    body = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl(verb, "-n", cluster.namespace, "-f", "-", input=json.dumps(body), timeout=120)


def secret_bytes_served(control_plane: ControlPlane) -> dict[str, float]:
    """Bytes of Secrets the kube-apiserver has answered LISTs and WATCHes with, by label set
    (a watch counts once it has ended). The operator is the only client that lists or watches
    Secrets here; kubectl's own GETs (replace reads first) are left out."""
    text = control_plane.kubectl("get", "--raw", "/metrics").stdout
    served: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"apiserver_response_sizes_sum\{(.*)\} (\S+)", line)
        if match and re.search(r'resource="secrets".*verb="(LIST|WATCH)"', match[1]):
            served[match[1]] = float(match[2])
    return served


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def test_crowd_of_unrelated_secrets_is_never_read_and_rotation_is_seen_in_seconds(
    control_plane: ControlPlane,
    cluster: Cluster,
    two_client_idp: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    crowd(cluster, "create")
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(
        {
            "apiVersion": "oauth-token-operator.dev/v1alpha1",
            "kind": "OAuthClient",
            "metadata": {"name": "app"},
            "spec": {
                "issuer": two_client_idp.issuer,
                "credentialsSecretRef": {"name": "creds"},
                "tls": {"caBundleSecretRef": {"name": "idp-ca"}},
            },
        }
    )
    served = secret_bytes_served(control_plane)
    operator = OperatorProcess(
        control_plane.kubeconfig_path, cluster.namespace, tmp_path / "operator.log"
    )
    with operator:
        cluster.wait_ready("app")
        crowd(cluster, "replace")  # every unrelated Secret rewritten, as by an upgrade
        token = (cluster.secret_data("app-token") or {})["access_token"]
        assert claims(token)["client_id"] == CC_BASIC

        # The credentials Secret rotated under the running operator: used within seconds.
        rotated = time.monotonic()
        cluster.create_secret("creds", {"client_id": NEXT_CLIENT, "client_secret": NEXT_SECRET})

        def issued_to_next() -> bool:
            data = cluster.secret_data("app-token") or {}
            return bool(claims(data["access_token"])["client_id"] == NEXT_CLIENT)

        eventually(issued_to_next, timeout=15, interval=0.2, what="a token for the new client")
        assert time.monotonic() - rotated < 15
        assert cluster.ready("app")["status"] == "True"  # type: ignore[index]
        time.sleep(2)  # the watch events of the last writes
    # The operator has stopped: its watches have ended and count now.

    # ~45 MB of unrelated Secret data was written (created, then replaced); the operator's
    # LISTs and watches carried a few KB per Secret in use and metadata for the rest.
    after = secret_bytes_served(control_plane)
    sent = {k: v - served.get(k, 0.0) for k, v in after.items() if v > served.get(k, 0.0)}
    assert sum(sent.values()) < 1_000_000, f"Secrets served, bytes: {sent}"
