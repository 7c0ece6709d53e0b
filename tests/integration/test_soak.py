"""Two minutes of the chaos soak (bench/soak.py runs it for longer, SIGKILL included):
refresh-token clients rotating at the real provider while the operator is stopped with
SIGTERM every 30 s, the provider is cut off for 8 s every 25 s and kube-apiserver stops
once for 10 s while the provider's answers are held back (refreshes in flight). No grant
may be lost, no token seen expired (but for those that expired while nothing could be
written, counted apart), no reuse reach the provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.controlplane import ControlPlane
from tests.support.idp import IdentityProvider
from tests.support.pki import TestCA
from tests.support.soak import Faults, Soak, SoakConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_two_minutes_of_sigterms_outages_and_an_apiserver_restart_lose_nothing(
    control_plane: ControlPlane,
    cluster: Cluster,
    test_ca: TestCA,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    config = SoakConfig(
        clients=20,
        duration=120,
        token_ttl=60,
        margin="15s",
        faults=Faults(restart_every=30, outage_every=25, outage_seconds=8),
    )
    with IdentityProvider(test_ca, access_token_ttl=config.token_ttl) as idp:
        report = Soak(control_plane, cluster, idp, idp_ca_secret, tmp_path, config, print).run()
    print("\n" + "\n".join(report.lines()))

    assert report.sigterms >= 4 and report.outages >= 3 and report.apiserver_restarts == 1
    assert report.in_flight_at_apiserver_stop >= 1  # answers arrived with the apiserver away
    assert report.refreshes["refresh_token"] >= 10  # the rotations happened
    assert report.grants_lost == []
    assert report.reuse_reasons == {}
    assert report.expired == set()
    assert report.unexpected_exits == 0
