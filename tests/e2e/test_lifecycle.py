"""The operator's life as a Deployment on a real node: its Secrets garbage-collected with
their OAuthClients, its pod replaced, the chart upgraded while refresh-token clients
refresh, and the chart uninstalled. Figures go to stdout (`pytest -s`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import OPERATOR_NS, RELEASE, Release
from tests.e2e.test_node import oauth_client
from tests.support.cli import login
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import _free_port
from tests.support.idp import (
    CC_POST,
    CC_POST_SECRET,
    RT_POST,
    RT_POST_SECRET,
    IdentityProvider,
)
from tests.support.pki import TestCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def test_deleting_an_oauthclient_garbage_collects_its_secret(
    release: Release, app_ns: Cluster, e2e_idp: IdentityProvider
) -> None:
    app_ns.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    app_ns.apply(oauth_client("gc", e2e_idp, "creds"))
    app_ns.wait_ready("gc", timeout=60)
    assert app_ns.secret_data("gc-token")

    app_ns.kubectl("delete", "oauthclient", "gc", "-n", app_ns.namespace, "--wait")
    started = time.monotonic()
    eventually(
        lambda: app_ns.get("secret", "gc-token") is None,
        timeout=60,
        what="the garbage collector to delete Secret gc-token",
    )
    print(f"\noutput Secret garbage-collected {time.monotonic() - started:.1f} s after delete")
    assert app_ns.secret_data("creds")  # the user's credentials are the user's


@pytest.fixture
def long_lived_idp(e2e_ca: TestCA) -> Iterator[IdentityProvider]:
    """A provider of the test's own (its request counts are the test's alone), one-hour
    tokens: nothing is due while the operator pod is replaced."""
    with IdentityProvider(e2e_ca, access_token_ttl=3600) as idp:
        yield idp


def ready_clients(app_ns: Cluster, idp: IdentityProvider) -> list[str]:
    """Three client-credentials OAuthClients, Ready; the provider's counts start after."""
    names = ["one", "two", "three"]
    app_ns.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    for name in names:
        app_ns.apply(oauth_client(name, idp, "creds"))
    for name in names:
        app_ns.wait_ready(name, timeout=60)
    idp.reset_stats()
    return names


def test_a_replaced_operator_pod_requests_no_token_that_is_still_valid(
    release: Release, app_ns: Cluster, long_lived_idp: IdentityProvider
) -> None:
    names = ready_clients(app_ns, long_lived_idp)
    (old,) = release.pods()

    deleted = time.monotonic()
    release.cp.kubectl(
        "delete", "pod", old["metadata"]["name"], "-n", OPERATOR_NS, "--wait", timeout=120
    )
    release.wait_ready()
    ready = time.monotonic()
    (new,) = release.pods()
    assert new["metadata"]["name"] != old["metadata"]["name"]

    def reused_all() -> bool:
        log = release.node.container_log(OPERATOR_NS, new["metadata"]["name"], "operator")
        return all(
            f"{app_ns.namespace}/{name}: token in Secret {name}-token is valid" in log
            for name in names
        )

    eventually(reused_all, timeout=60, what="the new pod to find every token valid")
    print(f"\nreplaced operator pod Ready {ready - deleted:.1f} s after the delete")
    assert long_lived_idp.stats()["tokenRequests"] == 0
    for name in names:
        condition = app_ns.ready(name)
        assert condition is not None and condition["status"] == "True", condition


@pytest.fixture
def rotating_idp(e2e_ca: TestCA) -> Iterator[IdentityProvider]:
    """Rotates refresh tokens and revokes the grant on reuse; 30 s access tokens, so that
    with the release's 20 s margin every client refreshes about every 10 s."""
    with IdentityProvider(e2e_ca, access_token_ttl=30) as idp:
        yield idp


def test_helm_upgrade_while_refresh_tokens_rotate_loses_no_grant(
    release: Release, app_ns: Cluster, rotating_idp: IdentityProvider, tmp_path: Path
) -> None:
    """A changed value rolls the operator (Recreate: the old pod drains, then the new one
    starts) while its refresh-token clients refresh every ~10 s and the provider holds each
    answer 2 to 3 s: every rotation reaches the credentials Secret, none is reused."""
    names = ["a", "b", "c", "d"]
    for name in names:
        done = login(app_ns, rotating_idp, tmp_path, f"{name}-creds", RT_POST, RT_POST_SECRET)
        assert done.returncode == 0, done.stderr
        client = oauth_client(name, rotating_idp, f"{name}-creds", grantType="refresh_token")
        client["spec"]["refresh"] = {"minInterval": "1s"}
        app_ns.apply(client)
    for name in names:
        app_ns.wait_ready(name, timeout=60)
    rotating_idp.reset_stats()
    rotating_idp.delay_token_answers(2000)
    # Some refreshes before the upgrade, so that the rollout lands among them.
    eventually(
        lambda: rotating_idp.stats()["byGrant"]["refresh_token"] >= len(names),
        timeout=60,
        what="a refresh of every client",
    )
    (old,) = release.pods()
    # The upgrade lands on refreshes in flight (answers take 3 s), not between them.
    rotating_idp.delay_token_answers(3000)
    eventually(lambda: rotating_idp.in_flight() >= 1, timeout=60, interval=0.05, what="a refresh")
    try:
        upgraded = Release(release.cp, release.node, [*release.values, "logLevel=info"])
        started = time.monotonic()
        upgraded.helm("upgrade")
        upgraded.wait_ready()
        rolled = time.monotonic() - started
        (new,) = release.pods()
        assert new["metadata"]["name"] != old["metadata"]["name"]
        before = rotating_idp.stats()["byGrant"]["refresh_token"]
        # Every client refreshes again, from the new pod, with the token the old one left.
        eventually(
            lambda: rotating_idp.stats()["byGrant"]["refresh_token"] >= before + len(names),
            timeout=90,
            what="a refresh of every client by the new pod",
        )
    finally:
        rotating_idp.delay_token_answers(0)
        release.helm("upgrade")
        release.wait_ready()
    stats = rotating_idp.stats()
    print(
        f"\nhelm upgrade: new operator pod Ready {rolled:.1f} s after the upgrade began; "
        f"{stats['byGrant']['refresh_token']} refreshes, {stats['invalidGrant']} reuse errors"
    )
    assert stats["invalidGrant"] == 0, stats["invalidGrantReasons"]
    for name in names:
        condition = app_ns.ready(name)
        assert condition is not None and condition["status"] == "True", condition


def acting(release: Release) -> bool | None:
    """The oauth_token_operator_active gauge of the release's pod (hostNetwork: its metrics
    port is on the node's loopback); None while it does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{release.value('metrics.port')}/metrics").text
    except httpx.HTTPError:
        return None
    (line,) = [x for x in text.splitlines() if x.startswith("oauth_token_operator_active ")]
    return float(line.split()[1]) == 1.0


def test_of_two_peered_replicas_one_acts_and_the_other_takes_over_from_a_deleted_pod(
    release: Release, app_ns: Cluster, long_lived_idp: IdentityProvider
) -> None:
    """What `replicas: 2` gives: kopf peering, one replica acting, the other standing by.
    Two pods of one Deployment cannot share this single hostNetwork node (their probe and
    metrics ports are host ports), so the two replicas are two releases of the chart in
    one peering: the same pods, the same peering, two Deployments."""
    first = release.with_values("peering.enabled=true")
    second = release.with_values(
        f"healthPort={_free_port()}",
        f"metrics.port={_free_port()}",
        "peering.enabled=true",
        "peering.createCRDs=false",  # the first release's
        name="peer",
    )
    first.helm("upgrade")
    first.wait_ready()
    try:
        second.helm("install")
        second.wait_ready()
        eventually(lambda: acting(second) is False, timeout=30, what="the second to stand by")
        assert acting(first) is True  # the older replica keeps the work

        names = ready_clients(app_ns, long_lived_idp)

        (active,) = first.pods()
        deleted = time.monotonic()
        first.cp.kubectl(
            "delete", "pod", active["metadata"]["name"], "-n", OPERATOR_NS, "--wait=false"
        )
        # A client created as the active pod goes: only an acting replica serves it.
        app_ns.apply(oauth_client("late", long_lived_idp, "creds"))
        eventually(lambda: acting(second), timeout=60, interval=0.2, what="the takeover")
        took_over = time.monotonic() - deleted
        app_ns.wait_ready("late", timeout=60)
        served = time.monotonic() - deleted

        (standby,) = second.pods()
        log = second.node.container_log(OPERATOR_NS, standby["metadata"]["name"], "operator")
        for name in names:  # resumed from the Secrets
            assert f"{app_ns.namespace}/{name}: token in Secret {name}-token is valid" in log
        assert long_lived_idp.stats()["tokenRequests"] == 1  # "late"'s, and no other
        # The Deployment's new pod is younger than the acting one: it stands by.
        first.wait_ready()
        eventually(lambda: acting(first) is False, timeout=30, what="the new pod to stand by")
        print(
            f"\npeering handover: the standby acted {took_over:.1f} s after the active pod's "
            f"delete; a client created at the delete was Ready after {served:.1f} s"
        )
    finally:
        second.uninstall()
        release.helm("upgrade")
        release.wait_ready()


def test_helm_uninstall_leaves_the_crd_the_clients_and_their_secrets(
    release: Release, app_ns: Cluster, e2e_idp: IdentityProvider
) -> None:
    """Uninstalling removes the operator, not users' data: Helm never deletes a chart's
    CRDs (that would delete every OAuthClient), and the Secrets belong to the OAuthClients.
    The release is installed again afterwards, as the other tests expect it."""
    app_ns.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    app_ns.apply(oauth_client("kept", e2e_idp, "creds"))
    app_ns.wait_ready("kept", timeout=60)
    token = (app_ns.secret_data("kept-token") or {})["access_token"]

    release.uninstall()
    try:
        eventually(lambda: release.pods() == [], timeout=60, what="the operator pod to go")
        assert release.cp.kubectl("get", "crd", "oauthclients.oauth-token-operator.dev")
        assert app_ns.get("oauthclient", "kept") is not None
        assert (app_ns.secret_data("kept-token") or {}).get("access_token") == token
        assert app_ns.secret_data("creds")
        gone = release.cp.kubectl("get", "serviceaccount", RELEASE, "-n", OPERATOR_NS, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr
    finally:
        release.helm("install")
        release.wait_ready()
