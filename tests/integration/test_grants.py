"""Never lose a grant, against the real provider (which rotates refresh tokens and revokes
the whole grant when an old one comes back) and the real API server: a SIGTERM while
refreshes are in flight, OAuthClients sharing one refresh token, and the CLI refreshing
while the operator does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_operator import oauth_client
from tests.support.cli import cli, login
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.idp import RT_POST, RT_POST_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess
from tests.support.pki import TestCA

pytestmark = pytest.mark.integration


@pytest.fixture
def rotating_idp(test_ca: TestCA) -> Iterator[IdentityProvider]:
    """A provider of its own (tests change its answer delay): 20 s access tokens, so that
    refresh-token clients refresh every ~13 s."""
    with IdentityProvider(test_ca, access_token_ttl=20) as idp:
        yield idp


def refresh_client(name: str, idp: IdentityProvider, credentials: str) -> dict[str, Any]:
    return oauth_client(
        name,
        idp.issuer,
        credentials,
        grantType="refresh_token",
        clientAuthentication="client_secret_post",
        refresh={"minInterval": "1s"},
    )


def hold_answers_until_one_is_in_flight(idp: IdentityProvider, ms: int) -> None:
    """From now on the provider holds its token answers back `ms`; returns once a refresh
    is being held (its answer, a rotated refresh token, still on the way)."""
    idp.reset_stats()
    idp.delay_token_answers(ms)
    eventually(lambda: idp.in_flight() >= 1, timeout=40, interval=0.05, what="a refresh in flight")


def operator(control_plane: ControlPlane, cluster: Cluster, log: Path) -> OperatorProcess:
    return OperatorProcess(
        control_plane.kubeconfig_path,
        cluster.namespace,
        log,
        ("--propagation-margin", "2s", "--drain-timeout", "20s"),
    )


def test_sigterm_with_refreshes_in_flight_loses_no_grant(
    control_plane: ControlPlane,
    cluster: Cluster,
    rotating_idp: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    """The provider has rotated, its answer is on the way (held back 3 s), and the operator
    is told to stop: the run finishes and persists before the process exits, so the next
    operator refreshes with the new token and the provider never sees reuse."""
    names = ["a", "b", "c", "d"]
    for name in names:
        result = login(cluster, rotating_idp, tmp_path, f"{name}-creds", RT_POST, RT_POST_SECRET)
        assert result.returncode == 0, result.stderr
        cluster.apply(refresh_client(name, rotating_idp, f"{name}-creds"))
    process = operator(control_plane, cluster, tmp_path / "operator.log").start()
    try:
        for name in names:
            cluster.wait_ready(name)
        hold_answers_until_one_is_in_flight(rotating_idp, 3000)
        assert process.terminate(timeout=60) == 0
        drained = rotating_idp.stats()
        assert "drained" in process.logs()
        assert drained["byGrant"]["refresh_token"] >= 1  # a rotation completed during the drain

        rotating_idp.delay_token_answers(0)
        offset = len(process.logs())
        process.start()
        # Every client refreshes again with the token the drained operator persisted.
        for name in names:
            process.wait_for_log(f"{cluster.namespace}/{name}: wrote a token", 60, offset)
        stats = rotating_idp.stats()
        assert stats["invalidGrant"] == 0, stats["invalidGrantReasons"]
        for name in names:
            ready = cluster.ready(name)
            assert ready is not None and ready["status"] == "True", ready
    finally:
        process.stop()


def test_an_api_server_down_when_the_rotated_token_arrives_loses_no_grant(
    control_plane: ControlPlane,
    cluster: Cluster,
    rotating_idp: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    """The provider's answer (a rotated refresh token) arrives while kube-apiserver is
    down for longer than the persist's own retries: the operator keeps the token in hand,
    writes it once the apiserver is back, and refreshes with it; the provider, which
    revokes the grant when an old token comes back, never sees reuse."""
    result = login(cluster, rotating_idp, tmp_path, "down-creds", RT_POST, RT_POST_SECRET)
    assert result.returncode == 0, result.stderr
    cluster.apply(refresh_client("down", rotating_idp, "down-creds"))
    process = operator(control_plane, cluster, tmp_path / "operator.log").start()
    try:
        cluster.wait_ready("down")
        before = (cluster.secret_data("down-creds") or {}).get("refresh_token")
        hold_answers_until_one_is_in_flight(rotating_idp, 4000)
        control_plane.stop_apiserver()
        try:
            eventually(lambda: rotating_idp.in_flight() == 0, timeout=20, what="the answer sent")
            time.sleep(12)  # the persist's own retries (~6 s) give up meanwhile
            assert rotating_idp.stats()["byGrant"]["refresh_token"] == 1
        finally:
            rotating_idp.delay_token_answers(0)
            control_plane.start_apiserver()
        # Written from memory once the apiserver is back, then used for the next refreshes.
        eventually(
            lambda: (cluster.secret_data("down-creds") or {}).get("refresh_token") != before,
            timeout=30,
            what="the rotated refresh token persisted",
        )
        eventually(
            lambda: rotating_idp.stats()["byGrant"]["refresh_token"] >= 3,
            timeout=60,
            what="two refreshes after the outage",
        )
        stats = rotating_idp.stats()
        assert stats["invalidGrant"] == 0, stats["invalidGrantReasons"]
        ready = cluster.ready("down")
        assert ready is not None and ready["status"] == "True", ready
        logs = process.logs()
        assert "RefreshTokenNotPersisted" in logs
        assert "failed unexpectedly" not in logs
    finally:
        process.stop()


def test_clients_sharing_one_refresh_token_keep_the_grant(
    control_plane: ControlPlane,
    cluster: Cluster,
    rotating_idp: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    """Three OAuthClients read one credentials Secret with one refresh token: their refreshes
    take turns, each with the token its predecessor persisted."""
    result = login(cluster, rotating_idp, tmp_path, "shared-creds", RT_POST, RT_POST_SECRET)
    assert result.returncode == 0, result.stderr
    names = ["one", "two", "three"]
    for name in names:
        cluster.apply(refresh_client(name, rotating_idp, "shared-creds"))
    rotating_idp.reset_stats()
    with operator(control_plane, cluster, tmp_path / "operator.log"):
        for name in names:
            cluster.wait_ready(name)
        # Three refresh rounds of every client (20 s tokens).
        eventually(
            lambda: rotating_idp.stats()["byGrant"]["refresh_token"] >= 9,
            timeout=90,
            what="nine refreshes",
        )
        stats = rotating_idp.stats()
        assert stats["invalidGrant"] == 0, stats["invalidGrantReasons"]
        for name in names:
            ready = cluster.ready(name)
            assert ready is not None and ready["status"] == "True", ready


def test_cli_refreshing_beside_the_operator_keeps_the_grant(
    control_plane: ControlPlane,
    cluster: Cluster,
    rotating_idp: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    """`oauth-token-operator token` while the operator refreshes the same client: the two
    take turns on the refresh token, and the operator does not answer the CLI's rotation
    with an extra exchange while its own access token is valid."""
    result = login(cluster, rotating_idp, tmp_path, "creds", RT_POST, RT_POST_SECRET)
    assert result.returncode == 0, result.stderr
    cluster.apply(refresh_client("app", rotating_idp, "creds"))
    rotating_idp.delay_token_answers(500)  # widen the window in which both could refresh
    outcomes: list[tuple[int, str]] = []
    with operator(control_plane, cluster, tmp_path / "operator.log") as process:
        cluster.wait_ready("app")
        deadline = time.monotonic() + 45

        def cli_loop() -> None:
            while time.monotonic() < deadline:
                done = cli(cluster, "token", "app", "-n", cluster.namespace)
                outcomes.append((done.returncode, done.stderr))

        threads = [threading.Thread(target=cli_loop) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = rotating_idp.stats()
        assert stats["invalidGrant"] == 0, stats["invalidGrantReasons"]
        ready = cluster.ready("app")
        assert ready is not None and ready["status"] == "True", ready
        # Each CLI run either refreshed or was told the token is in use; nothing else.
        assert outcomes
        for code, stderr in outcomes:
            assert code == 0 or "RefreshTokenInUse" in stderr, stderr
        assert any(code == 0 for code, _ in outcomes)
        assert "changed; refreshing" not in process.logs()


def test_token_refuses_a_missing_ca_bundle_like_the_operator(
    cluster: Cluster, identity_provider: IdentityProvider, idp_ca_secret: str
) -> None:
    cluster.create_secret("creds", {"client_id": "x", "client_secret": "y"})
    client = oauth_client("api", identity_provider.issuer, "creds")
    client["spec"]["tls"] = {"caBundleSecretRef": {"name": "no-such-ca"}}
    cluster.apply(client)
    result = cli(cluster, "token", "api", "-n", cluster.namespace)
    assert result.returncode == 1
    assert "InvalidCABundle" in result.stderr and "no-such-ca" in result.stderr


def test_a_dead_grant_tells_the_user_to_log_in_and_since_when(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    cluster.create_secret(
        "creds",
        {"client_id": RT_POST, "client_secret": RT_POST_SECRET, "refresh_token": "revoked"},
    )
    cluster.apply(refresh_client("app", identity_provider, "creds"))
    with operator(control_plane, cluster, tmp_path / "operator.log"):
        ready = cluster.wait_not_ready("app")
        assert ready["reason"] == "InvalidGrant"
        assert "oauth-token-operator login" in ready["message"]
        assert f"-n {cluster.namespace} --secret creds" in ready["message"]
        status = (cluster.get("oauthclient", "app") or {})["status"]
        assert status["grantInvalidSince"]

        # A new login revives it at once, and the dead-since mark goes away.
        result = login(cluster, identity_provider, tmp_path, "creds", RT_POST, RT_POST_SECRET)
        assert result.returncode == 0, result.stderr
        cluster.wait_ready("app", timeout=30)
        assert "grantInvalidSince" not in (cluster.get("oauthclient", "app") or {})["status"]
