"""Custody of a refresh token: one user at a time (the refresh claim), across OAuthClients
sharing a credentials Secret, another process or the CLI, and a rotation that survives a
cancelled run (the SIGTERM drain)."""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.engine.config import Settings
from oauth_token_operator.engine.refresh import Refresher
from oauth_token_operator.engine.schedule import MIN_EXCHANGE_INTERVAL
from oauth_token_operator.exchange.custody import (
    CLAIM_ANNOTATION,
    CLAIM_TTL,
    Claim,
    ClaimStatus,
    Holder,
    claim_status,
)
from oauth_token_operator.oauth.types import Credentials, OAuthError, Outcome, Token, TokenRequest
from oauth_token_operator.resource.policy import SINGLE_TENANT
from oauth_token_operator.resource.spec import ObjectKey
from tests.unit.fakes import (
    CREDS_SECRET,
    LIFETIME,
    NS,
    START,
    Clock,
    FakeKube,
    FakeTokens,
    b64,
    client_body,
)

ME = Holder("operator@pod-a", "0001")


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (None, ClaimStatus.FREE),
        (Claim(ME.id, START + 10), ClaimStatus.MINE),
        (Claim("cli@laptop/77", START + 10), ClaimStatus.HELD),
        (Claim("operator@pod-b/0002", START + 10), ClaimStatus.HELD),  # another replica
        (Claim("cli@laptop/77", START - 1), ClaimStatus.ABANDONED),  # expired
        # The same identity with another instance: this process's dead predecessor.
        (Claim("operator@pod-a/0000", START + 10), ClaimStatus.ABANDONED),
    ],
)
def test_claim_status(claim: Claim | None, expected: ClaimStatus) -> None:
    assert claim_status(claim, ME, START) is expected


def test_two_cli_runs_on_one_machine_wait_for_each_other() -> None:
    first, second = Holder.for_cli(), Holder.for_cli()
    assert claim_status(Claim(first.id, START + 10), second, START) is ClaimStatus.HELD


def test_claim_round_trips_and_garbage_is_no_claim() -> None:
    claim = Claim("cli@laptop/77", START + 90)
    assert Claim.parse(claim.render()) == claim
    for garbage in ("", "{", "[]", '{"holder": 1}', '{"holder": "x", "until": "soon"}'):
        assert Claim.parse(garbage) is None


class RotatingProvider(FakeTokens):
    """A provider that rotates refresh tokens and revokes the grant when an old one comes
    back; answers after yielding to the event loop so that concurrent runs interleave."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.used: set[str] = set()
        self.revoked = False

    async def exchange(
        self,
        request: TokenRequest,
        creds: Credentials,
        default_lifetime: float,
        ca_pem: str | None = None,
    ) -> Token:
        self.calls.append(creds)
        await asyncio.sleep(0.01)
        assert creds.refresh_token is not None
        if self.revoked or creds.refresh_token in self.used:
            self.revoked = True
            raise OAuthError(Outcome.NEEDS_HUMAN, reasons.INVALID_GRANT, "token reused")
        self.used.add(creds.refresh_token)
        return self.issue(creds, self.clock())


@dataclass
class Shared:
    kube: FakeKube
    tokens: RotatingProvider
    refresher: Refresher
    clock: Clock


def shared_world() -> Shared:
    clock = Clock()
    kube = FakeKube()
    kube.put(
        NS,
        {
            "metadata": {"name": CREDS_SECRET, "namespace": NS},
            "data": {
                "client_id": b64("id-1"),
                "client_secret": b64("secret-1"),
                "refresh_token": b64("r1"),
            },
        },
    )
    tokens = RotatingProvider(clock)
    refresher = Refresher(
        kube, tokens, Settings(guard=SINGLE_TENANT, concurrency=8), clock=clock, holder=ME
    )
    return Shared(kube, tokens, refresher, clock)


def body(name: str) -> dict[str, Any]:
    obj = client_body("refresh_token", audience=f"urn:{name}")
    obj["metadata"] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1}
    return obj


async def test_clients_sharing_a_refresh_token_take_turns() -> None:
    """Three OAuthClients (one per audience) on one credentials Secret, refreshing at once,
    three times over: each uses the token its predecessor persisted; the grant survives."""
    w = shared_world()
    kube, tokens, refresher, clock = w.kube, w.tokens, w.refresher, w.clock
    names = ["a", "b", "c"]
    for name in names:
        await refresher.observe(body(name))
    for _ in range(3):
        await asyncio.gather(*(refresher._run(ObjectKey(NS, n)) for n in names))
        clock.now += LIFETIME  # everything due again

    assert not tokens.revoked
    assert [c.refresh_token for c in tokens.calls] == [f"r{i}" for i in range(1, 10)]
    assert kube.data(CREDS_SECRET)["refresh_token"] == "r10"
    assert CLAIM_ANNOTATION not in kube.secrets[NS, CREDS_SECRET]["metadata"]["annotations"]
    for name in names:
        (condition,) = kube.statuses[ObjectKey(NS, name)]["conditions"]
        assert condition["status"] == "True", condition


def claimed_by(kube: FakeKube, holder: str, until: float) -> None:
    secret = copy.deepcopy(kube.secrets[NS, CREDS_SECRET])
    secret["metadata"].setdefault("annotations", {})[CLAIM_ANNOTATION] = Claim(
        holder, until
    ).render()
    kube.put(NS, secret)


async def test_a_claim_held_elsewhere_is_waited_for_not_overtaken() -> None:
    w = shared_world()
    kube, tokens, refresher = w.kube, w.tokens, w.refresher
    claimed_by(kube, "cli@laptop/77", START + 40)  # `oauth-token-operator token` is refreshing
    await refresher.observe(body("a"))

    due = await refresher._run(ObjectKey(NS, "a"))

    assert tokens.calls == []  # the refresh token was not sent
    assert due is not None and START < due <= START + 40
    (condition,) = kube.statuses[ObjectKey(NS, "a")]["conditions"]
    assert condition["reason"] == reasons.REFRESH_TOKEN_IN_USE
    assert "cli@laptop/77" in condition["message"]


async def test_a_released_claim_is_used_at_once_not_after_the_floor() -> None:
    """A wait for someone else's claim sent nothing: when the holder releases it a second
    later, our exchange starts then, not MIN_EXCHANGE_INTERVAL after the attempt (two
    `token` loops would otherwise starve the operator until its token expired)."""
    w = shared_world()
    kube, tokens, refresher, clock = w.kube, w.tokens, w.refresher, w.clock
    await refresher.observe(body("a"))
    key = ObjectKey(NS, "a")
    await refresher._run(key)
    clock.now += LIFETIME  # due again
    claimed_by(kube, "cli@laptop/77", clock.now + 40)
    await refresher._run(key)
    assert len(tokens.calls) == 1

    clock.now += 1
    released = copy.deepcopy(kube.secrets[NS, CREDS_SECRET])
    del released["metadata"]["annotations"][CLAIM_ANNOTATION]
    kube.put(NS, released)
    refresher.secret_changed(NS, CREDS_SECRET, kube.secrets[NS, CREDS_SECRET])
    await refresher._run(key)

    assert [c.refresh_token for c in tokens.calls] == ["r1", "r2"]
    assert not tokens.revoked


async def test_a_dead_predecessors_claim_is_taken_over_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGKILL during an exchange leaves our own claim behind: the restarted process (same
    identity, new instance) takes it over without waiting for it to expire, and says so."""
    w = shared_world()
    kube, tokens, refresher = w.kube, w.tokens, w.refresher
    claimed_by(kube, "operator@pod-a/dead", START + CLAIM_TTL)
    await refresher.observe(body("a"))

    with caplog.at_level(logging.WARNING):
        await refresher._run(ObjectKey(NS, "a"))

    assert [c.refresh_token for c in tokens.calls] == ["r1"]
    assert kube.data(CREDS_SECRET)["refresh_token"] == "r2"
    assert "abandoned refresh claim of operator@pod-a/dead" in caplog.text


async def test_a_claim_conflict_rereads_and_uses_the_newer_token() -> None:
    """Another process rotated the token between our read and our claim: the claim's
    compare-and-swap fails, and the token we then use is theirs, not the one we read."""
    w = shared_world()
    kube, tokens, refresher = w.kube, w.tokens, w.refresher
    await refresher.observe(body("a"))
    original = kube.replace_secret
    raced = False

    async def racing_replace(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        nonlocal raced
        if not raced:
            raced = True
            newer = copy.deepcopy(kube.secrets[NS, CREDS_SECRET])
            newer["data"]["refresh_token"] = b64("r7")
            kube.put(NS, newer)
            tokens.used.update({"r1", "r2", "r3", "r4", "r5", "r6"})
        return await original(namespace, body)

    kube.replace_secret = racing_replace  # type: ignore[method-assign]
    await refresher._run(ObjectKey(NS, "a"))

    assert [c.refresh_token for c in tokens.calls] == ["r7"]
    assert not tokens.revoked
    assert kube.data(CREDS_SECRET)["refresh_token"] == "r8"


async def test_a_cancelled_run_still_persists_the_rotated_token() -> None:
    """The SIGTERM drain cancels runs that outlive it; a refresh already sent finishes and
    persists its rotated token first, so the next process does not reuse the old one."""
    w = shared_world()
    kube, tokens, refresher = w.kube, w.tokens, w.refresher
    await refresher.observe(body("a"))
    run = asyncio.create_task(refresher._run(ObjectKey(NS, "a")))
    for _ in range(100):  # until the request is at the provider
        if tokens.calls:
            break
        await asyncio.sleep(0)
    run.cancel()  # while the provider is answering

    with pytest.raises(asyncio.CancelledError):
        await run
    assert kube.data(CREDS_SECRET)["refresh_token"] == "r2"
    assert CLAIM_ANNOTATION not in kube.secrets[NS, CREDS_SECRET]["metadata"]["annotations"]


async def test_a_rotation_by_the_cli_does_not_cause_an_extra_exchange() -> None:
    w = shared_world()
    kube, refresher = w.kube, w.refresher
    key = ObjectKey(NS, "a")
    await refresher.observe(body("a"))
    due = await refresher._run(key)
    assert due is not None
    refresher.scheduler.schedule(key, due)

    # `oauth-token-operator token a` rotated the token: the Secret now holds r3.
    secret = copy.deepcopy(kube.secrets[NS, CREDS_SECRET])
    secret["data"]["refresh_token"] = b64("r3")
    kube.put(NS, secret)
    refresher.secret_changed(NS, CREDS_SECRET, secret)

    assert refresher.scheduler.due_time(key) == due  # the valid token stays until due


async def test_a_new_login_after_invalid_grant_retries_at_once() -> None:
    w = shared_world()
    kube, tokens, refresher, clock = w.kube, w.tokens, w.refresher, w.clock
    key = ObjectKey(NS, "a")
    tokens.revoked = True
    await refresher.observe(body("a"))
    due = await refresher._run(key)
    assert due is not None
    refresher.scheduler.schedule(key, due)
    status = kube.statuses[key]
    (condition,) = status["conditions"]
    assert condition["reason"] == reasons.INVALID_GRANT
    assert "oauth-token-operator login" in condition["message"]
    assert f"--secret {CREDS_SECRET}" in condition["message"]
    assert status["grantInvalidSince"] == "2023-11-14T22:13:20Z"

    # Our own claim release is no news; a new refresh token from `login` is.
    refresher.secret_changed(NS, CREDS_SECRET, kube.secrets[NS, CREDS_SECRET])
    assert refresher.scheduler.due_time(key) == due
    secret = copy.deepcopy(kube.secrets[NS, CREDS_SECRET])
    secret["data"]["refresh_token"] = b64("r100")
    kube.put(NS, secret)
    refresher.secret_changed(NS, CREDS_SECRET, secret)
    assert refresher.scheduler.due_time(key) == clock.now

    tokens.revoked = False
    clock.now += MIN_EXCHANGE_INTERVAL
    await refresher._run(key)
    status = kube.statuses[key]
    assert status["conditions"][0]["status"] == "True"
    assert status["grantInvalidSince"] is None  # merge patch: removed
