"""The operator outlives its CRD: deleting the OAuthClient CRD (an uninstall gone half-way,
a CRD re-created to change its schema) leaves the operator running and saying why it is
idle, and it picks the clients up again when the CRD returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import CRD
from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

CRD_NAME = "oauthclients.oauth-token-operator.dev"


def _install_crd(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")


@pytest.fixture
def crd_restored(control_plane: ControlPlane) -> Iterator[None]:
    """Whatever the test does to the CRD, the next test finds it installed."""
    yield
    _install_crd(control_plane)


def test_operator_survives_its_crd_being_deleted_and_resumes_when_it_returns(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
    crd_restored: None,
) -> None:
    cluster.create_secret("app-creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(oauth_client("app", identity_provider.issuer, "app-creds"))
    cluster.wait_ready("app")

    control_plane.kubectl("delete", "crd", CRD_NAME, "--wait=true", "--timeout=60s")
    # kopf's watch of OAuthClients fails with a 404 right after, or its CRD observer stops
    # the watch first; either way the operator must still be there.
    time.sleep(5)
    assert operator_process.alive, operator_process.logs()[-3000:]

    _install_crd(control_plane)
    cluster.apply(oauth_client("again", identity_provider.issuer, "app-creds"))
    obj = cluster.wait_ready("again", timeout=90)
    assert obj["status"]["secretName"] == "again-token"
    assert operator_process.alive
    assert eventually(lambda: cluster.secret_data("again-token"), timeout=10)


def test_operator_started_before_its_crd_says_so_and_serves_it_once_installed(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
    crd_restored: None,
) -> None:
    control_plane.kubectl("delete", "crd", CRD_NAME, "--wait=true", "--timeout=60s")
    with OperatorProcess(
        control_plane.kubeconfig_path, cluster.namespace, tmp_path / "operator.log"
    ) as operator:
        operator.wait_for_log("the OAuthClient CRD is not installed", timeout=30)
        time.sleep(3)
        assert operator.alive, operator.logs()[-3000:]

        _install_crd(control_plane)
        cluster.create_secret(
            "app-creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET}
        )
        cluster.apply(oauth_client("app", identity_provider.issuer, "app-creds"))
        cluster.wait_ready("app", timeout=90)
        assert cluster.secret_data("app-token")
