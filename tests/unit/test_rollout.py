"""Rollout targets: a new token restarts the workloads that read it only at start, once per
burst, and a restarted operator restarts only the workloads whose pods hold an old token."""

from __future__ import annotations

import asyncio
import copy

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.engine.rollout import annotation_key, token_hash
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.resource.policy import ALLOWED_CLIENTS_ANNOTATION, Tenancy
from oauth_token_operator.resource.spec import ObjectKey
from tests.unit.fakes import KEY, NAME, NS, World

WEB = (NS, "Deployment", "web")
TARGETS = [{"kind": "Deployment", "name": "web"}]


def fast(world: World) -> None:
    world.refresher.rollouts.gather = 0.05
    world.refresher.rollouts.min_interval = 0.3


async def start_two_clients(world: World) -> ObjectKey:
    """The World's client and a sibling, both naming the Deployment web."""
    await world.refresher.observe(world.body(rolloutTargets=TARGETS))
    sibling = copy.deepcopy(world.body(rolloutTargets=TARGETS))
    sibling["metadata"].update(name="sibling", uid="uid-sibling")
    sibling["spec"]["secret"] = {"name": "sibling-token"}
    await world.refresher.observe(sibling)
    await world.refresher._run(KEY)
    await world.refresher._run(ObjectKey(NS, "sibling"))
    return ObjectKey(NS, "sibling")


def access_token(world: World, secret: str) -> str:
    return world.kube.data(secret)["access_token"]


async def test_a_burst_of_new_tokens_restarts_the_workload_once() -> None:
    world = World()
    fast(world)
    world.kube.workloads[WEB] = {}
    await start_two_clients(world)
    assert world.kube.workload_patches == []  # gathered, not yet sent

    await asyncio.sleep(0.2)
    assert world.kube.workload_patches == [
        (
            "Deployment",
            "web",
            {
                annotation_key(NAME): token_hash(access_token(world, "app-token")),
                annotation_key("sibling"): token_hash(access_token(world, "sibling-token")),
            },
        )
    ]
    restarted = [e for e in world.kube.events if e[1] == reasons.ROLLOUT_RESTARTED]
    assert len(restarted) == 2  # one Event on each client that asked


async def test_the_next_token_restarts_again_but_not_sooner_than_the_interval() -> None:
    world = World()
    fast(world)
    world.kube.workloads[WEB] = {}
    await world.refresher.observe(world.body(rolloutTargets=TARGETS))
    await world.refresher._run(KEY)
    await asyncio.sleep(0.1)
    assert len(world.kube.workload_patches) == 1

    world.clock.now += 3600  # due: a new token
    await world.refresher._run(KEY)
    await asyncio.sleep(0.1)
    assert len(world.kube.workload_patches) == 1  # within the interval: held back
    await asyncio.sleep(0.3)
    assert len(world.kube.workload_patches) == 2
    (_, _, patch) = world.kube.workload_patches[-1]
    assert patch == {annotation_key(NAME): token_hash(access_token(world, "app-token"))}


async def test_a_restarted_operator_restarts_only_workloads_with_an_old_token() -> None:
    world = World()
    fast(world)
    world.kube.workloads[WEB] = {}
    world.kube.workloads[NS, "StatefulSet", "db"] = {}
    targets = [*TARGETS, {"kind": "StatefulSet", "name": "db"}]
    await world.refresher.observe(world.body(rolloutTargets=targets))
    await world.refresher._run(KEY)
    await asyncio.sleep(0.1)
    assert len(world.kube.workload_patches) == 2
    # The operator stopped before the StatefulSet's restart was sent: its pods hold an older
    # token than the Secret.
    world.kube.workloads[NS, "StatefulSet", "db"][annotation_key(NAME)] = "older"

    world.refresher = world.new_refresher()  # a new process; the token in place is valid
    fast(world)
    await world.refresher.observe(world.body(rolloutTargets=targets))
    await world.refresher._run(KEY)
    await asyncio.sleep(0.1)

    assert len(world.tokens.calls) == 1  # resumed, no exchange
    assert [p[:2] for p in world.kube.workload_patches[2:]] == [("StatefulSet", "db")]


async def test_stopping_sends_the_restarts_still_being_gathered() -> None:
    world = World()
    world.kube.workloads[WEB] = {}
    await world.refresher.observe(world.body(rolloutTargets=TARGETS))
    await world.refresher._run(KEY)  # gathering for 5 s
    assert world.kube.workload_patches == []
    await world.refresher.rollouts.flush()
    assert [p[:2] for p in world.kube.workload_patches] == [("Deployment", "web")]


async def test_missing_or_forbidden_targets_are_warnings_and_the_token_stays_ready() -> None:
    world = World()
    fast(world)
    await world.refresher.observe(world.body(rolloutTargets=TARGETS))
    await world.refresher._run(KEY)
    await asyncio.sleep(0.1)
    warnings = [e for e in world.kube.events if e[0] == "Warning"]
    assert [e[1] for e in warnings] == [reasons.ROLLOUT_TARGET_NOT_FOUND]
    assert "rollout target Deployment web not found" in warnings[0][2]
    assert world.kube.ready()["status"] == "True"

    async def forbidden(namespace: str, kind: str, name: str, annotations: dict[str, str]) -> bool:
        raise KubeError(403, "deployments.apps is forbidden")

    world.kube.patch_pod_template_annotations = forbidden  # type: ignore[method-assign]
    world.clock.now += 3600
    await world.refresher._run(KEY)
    await asyncio.sleep(0.5)
    failed = [e for e in world.kube.events if e[1] == reasons.ROLLOUT_FAILED]
    assert len(failed) == 1  # a 403 is not retried: a person must grant it
    assert "rolloutTargets.enabled=true" in failed[0][2]
    assert world.kube.ready()["status"] == "True"


@pytest.mark.parametrize(
    ("opt_in", "restarted"),
    [
        (None, set()),  # no annotation: nobody restarts it in shared tenancy
        ({ALLOWED_CLIENTS_ANNOTATION: NAME}, {NAME}),
        ({ALLOWED_CLIENTS_ANNOTATION: "*"}, {NAME, "sibling"}),
        ({ALLOWED_CLIENTS_ANNOTATION: "someone-else"}, set()),
    ],
)
async def test_in_shared_tenancy_a_workload_is_restarted_only_for_clients_it_names(
    opt_in: dict[str, str] | None, restarted: set[str]
) -> None:
    world = World()
    world.refresher.rollouts.tenancy = Tenancy.SHARED
    fast(world)
    world.kube.workloads[WEB] = {}
    if opt_in is not None:
        world.kube.workload_opt_ins[WEB] = opt_in
    await start_two_clients(world)
    await asyncio.sleep(0.2)
    patched = {k for _, _, patch in world.kube.workload_patches for k in patch}
    assert patched == {annotation_key(name) for name in restarted}
    refused = {e for e in world.kube.events if e[1] == reasons.ROLLOUT_TARGET_NOT_OPTED_IN}
    assert len(refused) == 2 - len(restarted)
