"""The Refresher's decisions, with an in-memory Kubernetes and a fake token endpoint.

`refresher._run(key)` is the scheduler's work function; the scheduler loop is not started.
"""

from __future__ import annotations

import copy
from random import Random
from typing import Any

import pytest
import tenacity
from prometheus_client import REGISTRY

from oauth_token_operator import reasons
from oauth_token_operator.engine import decide, schedule
from oauth_token_operator.engine.config import Settings
from oauth_token_operator.engine.refresh import Refresher
from oauth_token_operator.exchange.custody import CLAIM_ANNOTATION
from oauth_token_operator.oauth.protocol import parse_token_response
from oauth_token_operator.oauth.types import Credentials, OAuthError, Outcome, Token
from oauth_token_operator.resource import status
from oauth_token_operator.resource.policy import SINGLE_TENANT
from oauth_token_operator.resource.secret_bodies import RecordedToken, owned_by
from oauth_token_operator.resource.spec import (
    EXPIRES_AT_ANNOTATION,
    MANAGED_BY_LABEL,
    OWNER_LABEL,
    ObjectKey,
)
from oauth_token_operator.wire import parse_rfc3339
from tests.unit.fakes import (
    CREDS_SECRET,
    KEY,
    LIFETIME,
    NS,
    OUTPUT_SECRET,
    START,
    UID,
    FakeTokens,
    World,
    b64,
    client_body,
    unb64,
)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes write retries without real sleeping."""
    monkeypatch.setattr(tenacity, "wait_exponential_jitter", lambda **_: tenacity.wait_none())


# --- first run and restarts ---------------------------------------------------------------


async def test_first_run_writes_an_owned_secret_and_ready_status() -> None:
    world = World()
    due = await world.start()

    assert len(world.tokens.calls) == 1
    assert world.tokens.calls[0].client_id == "id-1"
    assert world.tokens.calls[0].client_secret == "secret-1"

    secret = world.kube.secrets[NS, OUTPUT_SECRET]
    assert owned_by(secret, UID)
    assert secret["metadata"]["labels"][MANAGED_BY_LABEL] == "oauth-token-operator"
    data = world.kube.data(OUTPUT_SECRET)
    assert data["access_token"] == "access-1"
    assert data["token_type"] == "Bearer"
    expires = START + LIFETIME
    assert parse_rfc3339(data["expires_at"]) == expires
    assert parse_rfc3339(secret["metadata"]["annotations"][EXPIRES_AT_ANNOTATION]) == expires

    condition = world.kube.ready()
    assert condition["status"] == "True"
    assert condition["observedGeneration"] == 1
    status = world.kube.statuses[KEY]
    assert parse_rfc3339(status["expiresAt"]) == expires
    assert status["secretName"] == OUTPUT_SECRET
    assert status["consecutiveFailures"] == 0

    # Due at the 33 % rule (jitter only earlier), comfortably before expiry.
    assert due is not None
    assert START + 60 < due <= expires - 0.33 * LIFETIME + 1
    assert parse_rfc3339(status["nextRefreshTime"]) == pytest.approx(due, abs=1)
    assert world.kube.events == []  # a first token is no news: the status says it


async def test_second_run_before_due_does_not_exchange() -> None:
    world = World()
    first_due = await world.start()
    assert first_due is not None
    patches = len(world.kube.status_patches)
    world.clock.now += 300

    due = await world.refresher._run(KEY)

    assert len(world.tokens.calls) == 1
    assert due is not None and world.clock.now < due < START + LIFETIME
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-1"
    assert len(world.kube.status_patches) == patches  # nothing new to say


async def test_the_run_at_the_planned_time_exchanges_though_the_secret_keeps_seconds() -> None:
    """The Secret records times to the second; the plan drawn when writing must be the one
    the next run finds, or a run fires early, finds itself not due and draws again."""
    world = World()
    world.clock.now = START + 0.7
    due = await world.start()
    assert due is not None
    world.clock.now = due - 0.5  # a trigger just before: the same plan, not a new draw

    assert await world.refresher._run(KEY) == due
    world.clock.now = due
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 2


async def test_restart_reuses_the_token_in_the_secret() -> None:
    world = World()
    await world.start()
    writes = list(world.kube.writes)
    patches = len(world.kube.status_patches)
    world.clock.now += 600

    # A new operator process: fresh Refresher and token client, same cluster.
    world.tokens = FakeTokens(world.clock)
    world.refresher = world.new_refresher()
    await world.refresher.observe(world.body())
    due = await world.refresher._run(KEY)

    assert world.tokens.calls == []
    assert due is not None and world.clock.now < due < START + LIFETIME
    assert world.kube.writes == writes
    assert len(world.kube.status_patches) == patches


@pytest.mark.parametrize("selector", ["", "shard=a"])
async def test_restart_reads_the_output_secret_the_watch_listed_before_the_client(
    selector: str,
) -> None:
    """The watch lists Secrets before kopf brings their OAuthClients. Unsharded, the
    operator's labelled Secrets are kept from the list, so a restart reads no output Secret;
    a shard keeps only its own clients' Secrets and reads its output Secret once."""
    world = World()
    await world.start()
    world.tokens = FakeTokens(world.clock)
    world.refresher = Refresher(
        world.kube,
        world.tokens,
        Settings(guard=SINGLE_TENANT, concurrency=4, propagation_margin=90.0, selector=selector),
        clock=world.clock,
    )
    for name in (OUTPUT_SECRET, CREDS_SECRET):
        world.refresher.secret_changed(NS, name, copy.deepcopy(world.kube.secrets[NS, name]))
    world.kube.reads.clear()
    await world.refresher.observe(world.body())
    await world.refresher._run(KEY)
    assert world.tokens.calls == []
    assert world.kube.reads == ([OUTPUT_SECRET, CREDS_SECRET] if selector else [CREDS_SECRET])


async def test_restart_after_due_time_exchanges() -> None:
    world = World()
    await world.start()
    world.clock.now += LIFETIME * 0.9
    world.tokens = FakeTokens(world.clock)
    world.refresher = world.new_refresher()
    await world.refresher.observe(world.body())
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 1


async def test_spec_change_of_scopes_exchanges_but_policy_change_does_not() -> None:
    world = World()
    await world.start()
    world.clock.now += 60

    policy_only = world.body(refresh={"renewBeforePercentage": 50})
    policy_only["metadata"]["generation"] = 2
    await world.refresher.observe(policy_only)
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 1

    scopes = world.body(scopes=["openid", "email"])
    scopes["metadata"]["generation"] = 3
    await world.refresher.observe(scopes)
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 2
    assert world.kube.ready()["observedGeneration"] == 3


THEIRS = {"metadata": {"name": OUTPUT_SECRET, "namespace": NS}, "data": {"x": b64("theirs")}}


async def test_secret_owned_by_someone_else_is_not_overwritten() -> None:
    world = World()
    world.kube.put(NS, copy.deepcopy(THEIRS))
    world.refresher.secret_changed(NS, OUTPUT_SECRET, copy.deepcopy(THEIRS))  # the watch's list
    due = await world.start()
    assert world.tokens.calls == []
    assert world.kube.data(OUTPUT_SECRET) == {"x": "theirs"}
    assert world.kube.ready()["status"] == "False"
    assert world.kube.ready()["reason"] == "SecretNotOwned"
    assert due is not None and due - world.clock.now >= schedule.HUMAN_RETRY_BASE / 2


async def test_secret_owned_by_someone_else_is_not_overwritten_before_the_watch_shows_it() -> None:
    """A new client is presumed to have no output Secret (no read); if the watch has not
    listed the Secret yet, the create finds it: one token wasted, their Secret untouched."""
    world = World()
    world.kube.put(NS, copy.deepcopy(THEIRS))
    due = await world.start()
    assert len(world.tokens.calls) == 1
    assert world.kube.data(OUTPUT_SECRET) == {"x": "theirs"}
    assert world.kube.ready()["reason"] == "SecretNotOwned"
    assert due is not None and due - world.clock.now >= schedule.HUMAN_RETRY_BASE / 2
    await world.refresher._run(KEY)  # known now: no second token
    assert len(world.tokens.calls) == 1


async def test_an_edited_output_secret_is_restored_without_a_token_request() -> None:
    world = World()
    await world.start()
    calls = len(world.tokens.calls)
    edited = copy.deepcopy(world.kube.secrets[NS, OUTPUT_SECRET])
    edited["data"]["access_token"] = b64("typed-by-hand")
    edited["metadata"].setdefault("labels", {})["team"] = "theirs"  # kept: not the token
    world.kube.put(NS, edited)
    world.clock.now += 30

    world.refresher.secret_changed(
        NS, OUTPUT_SECRET, copy.deepcopy(world.kube.secrets[NS, OUTPUT_SECRET])
    )
    assert world.refresher.scheduler.due_time(KEY) == world.clock.now
    await world.refresher._run(KEY)

    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-1"
    assert world.kube.secrets[NS, OUTPUT_SECRET]["metadata"]["labels"]["team"] == "theirs"
    assert len(world.tokens.calls) == calls
    assert [e[1] for e in world.kube.events][-1] == reasons.SECRET_RESTORED
    # The watch's event of the repair itself is no drift.
    writes = len(world.kube.writes)
    world.refresher.secret_changed(
        NS, OUTPUT_SECRET, copy.deepcopy(world.kube.secrets[NS, OUTPUT_SECRET])
    )
    assert len(world.kube.writes) == writes
    assert world.refresher.clients[KEY].repair is None


async def test_a_late_event_of_an_older_version_restores_nothing_old() -> None:
    """A watch that restarted after an apiserver outage may deliver an event from before the
    operator's last write, then the event of that write. Neither is drift: the older body
    must not replace the one in memory, nor the older token the new one in the Secret."""
    world = World()
    await world.start()
    before = copy.deepcopy(world.kube.secrets[NS, OUTPUT_SECRET])
    world.clock.now += LIFETIME  # due: the next run writes a new token
    await world.refresher._run(KEY)
    new_token = world.kube.data(OUTPUT_SECRET)["access_token"]
    assert new_token != unb64(before["data"]["access_token"])
    writes = len(world.kube.writes)

    world.refresher.secret_changed(NS, OUTPUT_SECRET, before)  # late, older version
    world.refresher.secret_changed(
        NS, OUTPUT_SECRET, copy.deepcopy(world.kube.secrets[NS, OUTPUT_SECRET])
    )
    assert world.refresher.clients[KEY].repair is None
    await world.refresher._run(KEY)
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == new_token
    assert len(world.kube.writes) == writes


async def test_the_event_of_our_own_write_before_it_returns_is_no_drift() -> None:
    """The watch can show the operator's write before the write call returns: that is not
    someone else's change, and the older token must not be "restored" over the new one."""
    world = World()
    due = await world.start()
    original = world.kube.replace_secret

    async def shown_early(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        written = await original(namespace, body)
        if body["metadata"]["name"] == OUTPUT_SECRET:
            world.refresher.secret_changed(NS, OUTPUT_SECRET, copy.deepcopy(written))
        return written

    world.kube.replace_secret = shown_early  # type: ignore[method-assign]
    assert due is not None
    world.clock.now = due
    await world.refresher._run(KEY)

    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-2"
    assert world.refresher.clients[KEY].repair is None
    assert reasons.SECRET_RESTORED not in [e[1] for e in world.kube.events]


async def test_a_secret_written_for_an_earlier_client_of_the_name_is_adopted() -> None:
    """The OAuthClient was deleted with --cascade=orphan and applied again (a new uid): its
    Secret carries the operator's labels for this name and is taken over, not refused."""
    world = World()
    await world.start()
    calls = len(world.tokens.calls)
    world.refresher = world.new_refresher()
    body = world.body()
    body["metadata"]["uid"] = "uid-app-2"
    del body["status"]
    world.refresher.secret_changed(
        NS, OUTPUT_SECRET, copy.deepcopy(world.kube.secrets[NS, OUTPUT_SECRET])
    )
    await world.refresher.observe(body)
    await world.refresher._run(KEY)

    (owner,) = world.kube.secrets[NS, OUTPUT_SECRET]["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-app-2"  # at once: the old owner is gone, GC would delete it
    assert world.kube.ready()["status"] == "True"
    assert len(world.tokens.calls) == calls  # the token in place is reused


async def test_a_secret_labelled_for_another_client_is_still_not_adopted() -> None:
    world = World()
    labels = {MANAGED_BY_LABEL: "oauth-token-operator", OWNER_LABEL: "other"}
    theirs: dict[str, Any] = {
        **copy.deepcopy(THEIRS),
        "metadata": {**THEIRS["metadata"], "labels": labels},
    }
    world.kube.put(NS, theirs)
    world.refresher.secret_changed(NS, OUTPUT_SECRET, copy.deepcopy(theirs))
    await world.start()
    assert world.kube.ready()["reason"] == "SecretNotOwned"
    assert world.kube.data(OUTPUT_SECRET) == {"x": "theirs"}


# --- refresh-token rotation ---------------------------------------------------------------


async def test_rotated_refresh_token_is_persisted_before_the_output_secret() -> None:
    world = World("refresh_token")
    await world.start()

    assert world.tokens.refresh_tokens_sent == ["r1"]
    # The refresh claim, then the rotated token (releasing the claim), then the output.
    assert world.kube.writes == [
        ("replace", CREDS_SECRET),
        ("replace", CREDS_SECRET),
        ("create", OUTPUT_SECRET),
    ]
    assert CLAIM_ANNOTATION not in world.kube.secrets[NS, CREDS_SECRET]["metadata"].get(
        "annotations", {}
    )
    creds = world.kube.data(CREDS_SECRET)
    assert creds["refresh_token"] == "r2"
    assert creds["client_secret"] == "secret-1"  # other keys kept
    assert world.kube.ready()["status"] == "True"

    # The next refresh uses the new refresh token.
    world.clock.now += LIFETIME - 60
    await world.refresher._run(KEY)
    assert world.tokens.refresh_tokens_sent == ["r1", "r2"]
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r3"


async def test_failed_persist_keeps_token_in_memory_and_never_reuses_the_old_one(
    no_backoff: None,
) -> None:
    world = World("refresh_token")
    world.kube.failing_data.add(CREDS_SECRET)

    due = await world.start()

    # The access token is still delivered ...
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-1"
    # ... after the refresh token write was tried (and failed).
    first_output = world.kube.writes.index(("create", OUTPUT_SECRET))
    assert ("replace", CREDS_SECRET) in world.kube.writes[:first_output]
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r1"
    condition = world.kube.ready()
    assert "RefreshTokenNotPersisted" in condition["reason"] + condition["message"]
    assert "r2" not in condition["message"]
    assert due is not None and due - world.clock.now <= schedule.BACKOFF_CAP

    # Next run, still failing: no exchange with r1 (the provider would revoke the grant).
    world.clock.now = due
    due = await world.refresher._run(KEY)
    assert world.tokens.refresh_tokens_sent == ["r1"]
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r1"

    # The API server recovers: the token in hand is written first, without an exchange.
    world.kube.failing_data.clear()
    assert due is not None
    world.clock.now = due
    world.kube.writes.clear()
    await world.refresher._run(KEY)
    assert world.kube.writes[0] == ("replace", CREDS_SECRET)
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r2"
    assert world.tokens.refresh_tokens_sent == ["r1"]
    assert world.kube.ready()["status"] == "True"

    # And the next refresh uses r2.
    world.clock.now = START + LIFETIME - 30
    await world.refresher._run(KEY)
    assert world.tokens.refresh_tokens_sent == ["r1", "r2"]


async def test_an_api_server_down_after_the_answer_keeps_the_grant(no_backoff: None) -> None:
    """The provider rotated the refresh token and then the API server went away (nothing
    can be read, written or reported): the token stays in hand, retried within seconds for
    as long as the outage lasts, and is written before anything else once it is back."""
    world = World("refresh_token")
    first = await world.start()
    assert first is not None
    world.clock.now = first
    respond = world.tokens.respond

    def answer_then_fall(creds: Credentials, now: float) -> Token | OAuthError:
        world.kube.down = True
        return respond(creds, now)

    world.tokens.respond = answer_then_fall
    due = await world.refresher._run(KEY)
    assert world.tokens.refresh_tokens_sent == ["r1", "r2"]
    state = world.refresher.clients[KEY]
    assert state.unpersisted_refresh_token == "r3"
    for _ in range(5):  # a long outage: each retry within seconds, no exchange
        assert due is not None and due - world.clock.now <= schedule.HELD_TOKEN_RETRY
        world.clock.now = due
        due = await world.refresher._run(KEY)
    assert world.tokens.refresh_tokens_sent == ["r1", "r2"]

    world.kube.down = False
    world.tokens.respond = respond
    assert due is not None
    world.clock.now = due
    world.kube.writes.clear()
    await world.refresher._run(KEY)
    assert world.kube.writes[0] == ("replace", CREDS_SECRET)
    # Still due (the new access token was never written): refreshed with r3, never r2 again.
    assert world.tokens.refresh_tokens_sent == ["r1", "r2", "r3"]
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r4"
    assert state.unpersisted_refresh_token is None
    assert world.kube.ready()["status"] == "True"


def test_a_recorded_retry_after_a_restart_is_held_no_longer_than_any_retry() -> None:
    far = status.Resumed(generation=1, failures=3, next_refresh=START + 86400 * 30, expires_at=None)
    held = decide.resumed_retry(far, 1, force=False, now=START)
    assert held == START + schedule.HUMAN_RETRY_CAP
    assert decide.resumed_retry(far, 2, force=False, now=START) is None  # spec changed
    assert decide.resumed_retry(far, 1, force=True, now=START) is None  # a trigger


def test_a_held_refresh_token_is_retried_within_seconds_whatever_the_failure_count() -> None:
    error = OAuthError(Outcome.TRANSIENT, reasons.REFRESH_TOKEN_NOT_PERSISTED, "x")
    recorded = RecordedToken(START, START + LIFETIME, "h")
    for failures in (1, 5, 30):
        retry = decide.retry_after_failure(error, failures, recorded, START, 90.0, Random(1))
        assert START < retry.at <= START + schedule.HELD_TOKEN_RETRY
        assert retry.reason == reasons.REFRESH_TOKEN_NOT_PERSISTED  # not RefreshRetrying


async def test_failed_persist_next_run_when_due_exchanges_with_the_new_token(
    no_backoff: None,
) -> None:
    world = World("refresh_token")
    world.kube.failing_data.add(CREDS_SECRET)
    await world.start()
    world.kube.failing_data.clear()
    world.clock.now = START + LIFETIME - 30  # due by now: an exchange is needed

    await world.refresher._run(KEY)

    assert world.tokens.refresh_tokens_sent == ["r1", "r2"]
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r3"
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-2"


# --- failures -----------------------------------------------------------------------------


def invalid_client(creds: Credentials, now: float) -> OAuthError:
    return OAuthError(
        Outcome.NEEDS_HUMAN, "InvalidClient", "token endpoint answered invalid_client"
    )


async def test_invalid_client_is_reported_once_and_retried_slowly() -> None:
    world = World()
    world.tokens.respond = invalid_client

    due = await world.start()
    condition = world.kube.ready()
    assert condition["status"] == "False"
    assert condition["reason"] == "InvalidClient"
    assert due is not None and due - world.clock.now >= schedule.HUMAN_RETRY_BASE / 2
    assert (NS, OUTPUT_SECRET) not in world.kube.secrets

    for _ in range(3):
        assert due is not None
        world.clock.now = due
        due = await world.refresher._run(KEY)
        assert due is not None and due - world.clock.now >= schedule.HUMAN_RETRY_BASE / 2

    warnings = [e for e in world.kube.events if e[0] == "Warning"]
    assert [e[1] for e in warnings] == ["InvalidClient"]
    assert world.kube.statuses[KEY]["consecutiveFailures"] == 4
    assert len(world.tokens.calls) == 4
    assert "secret-1" not in str(world.kube.events) + str(world.kube.statuses)


async def test_transient_failure_with_valid_token_stays_ready() -> None:
    world = World()
    await world.start()
    # Past the latest due time the 33 % rule allows (each run re-rolls the jitter).
    world.clock.now = START + LIFETIME * (1 - 0.33) + 5
    world.tokens.respond = lambda creds, now: OAuthError(
        Outcome.TRANSIENT, "ProviderUnavailable", "token endpoint answered HTTP 503"
    )

    due = await world.refresher._run(KEY)

    condition = world.kube.ready()
    assert condition["status"] == "True"
    assert condition["reason"] == "RefreshRetrying"
    assert "ProviderUnavailable" in condition["message"]
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-1"  # kept
    assert due is not None and 0 < due - world.clock.now <= schedule.BACKOFF_BASE
    assert world.kube.statuses[KEY]["consecutiveFailures"] == 1


async def test_kubernetes_error_reading_credentials_keeps_a_valid_token_ready() -> None:
    """A transient API error is a failed refresh like any other: while the token in the
    output Secret is valid, Ready stays True with reason RefreshRetrying."""
    world = World()
    await world.start()
    world.clock.now = START + LIFETIME * (1 - 0.33) + 5  # due
    world.kube.failing_reads.add(CREDS_SECRET)
    world.refresher.secrets.forget(NS, CREDS_SECRET)  # a read that reaches the API server

    due = await world.refresher._run(KEY)

    assert world.tokens.calls[1:] == []
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-1"
    assert due is not None and 0 < due - world.clock.now <= schedule.BACKOFF_BASE
    condition = world.kube.ready()
    assert (condition["status"], condition["reason"]) == ("True", "RefreshRetrying")


async def test_restart_does_not_repeat_the_warning_event() -> None:
    world = World()
    world.tokens.respond = invalid_client
    await world.start()
    assert [e[1] for e in world.kube.events] == ["InvalidClient"]

    world.clock.now += schedule.HUMAN_RETRY_CAP
    world.refresher = world.new_refresher()
    await world.refresher.observe(world.body())  # carries the status written before
    await world.refresher._run(KEY)
    assert [e[1] for e in world.kube.events] == ["InvalidClient"]
    assert world.kube.ready()["reason"] == "InvalidClient"


async def test_restart_resumes_a_failing_client_at_its_recorded_retry() -> None:
    """A kill -9 and restart: a client that was failing waits for the retry its status
    records, with its failure count, instead of sending the same credentials again at once."""
    world = World()
    world.tokens.respond = invalid_client
    await world.start()
    world.clock.now += 60
    second = await world.refresher._run(KEY)  # a second failure, recorded as such
    assert world.kube.statuses[KEY]["consecutiveFailures"] == 2
    recorded_retry = parse_rfc3339(world.kube.statuses[KEY]["nextRefreshTime"])
    assert second is not None and recorded_retry == pytest.approx(second, abs=1)
    calls = len(world.tokens.calls)

    world.clock.now += 30
    world.refresher = world.new_refresher()
    await world.refresher.observe(world.body())
    due = await world.refresher._run(KEY)

    assert len(world.tokens.calls) == calls  # nothing sent before the recorded retry
    assert due == recorded_retry
    assert recorded_retry is not None
    world.clock.now = recorded_retry
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == calls + 1
    assert world.kube.statuses[KEY]["consecutiveFailures"] == 3  # counted on, not from 0


async def test_restart_of_a_failing_client_still_retries_at_once_on_new_credentials() -> None:
    world = World()
    world.tokens.respond = invalid_client
    await world.start()
    world.refresher = world.new_refresher()
    await world.refresher.observe(world.body())
    await world.refresher._run(KEY)  # held until the recorded retry
    calls = len(world.tokens.calls)

    world.tokens.respond = world.tokens.issue
    fixed = copy.deepcopy(world.kube.secrets[NS, CREDS_SECRET])
    fixed["data"]["client_secret"] = b64("secret-2")
    world.kube.put(NS, fixed)
    world.refresher.secret_changed(NS, CREDS_SECRET, world.kube.secrets[NS, CREDS_SECRET])
    assert world.refresher.scheduler.due_time(KEY) == world.clock.now
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == calls + 1
    assert world.kube.ready()["status"] == "True"


async def test_restart_keeps_the_recorded_refresh_time_so_status_stays_true() -> None:
    """A restarted process does not draw a new jitter for a token the last one planned:
    status.nextRefreshTime (unwritten on restart) stays the time of the next refresh."""
    world = World()
    await world.start()
    recorded = parse_rfc3339(world.kube.statuses[KEY]["nextRefreshTime"])
    patches = len(world.kube.status_patches)
    for seed in range(5):  # whatever the new process's random draw
        world.refresher = Refresher(
            world.kube,
            world.tokens,
            Settings(guard=SINGLE_TENANT, concurrency=4, propagation_margin=90.0),
            clock=world.clock,
            rng=Random(seed),
        )
        await world.refresher.observe(world.body())
        due = await world.refresher._run(KEY)
        assert due == recorded
    assert len(world.kube.status_patches) == patches


@pytest.mark.parametrize("broken", ["wrong key names", "no CA bundle key"])
async def test_fixing_a_secret_a_failing_client_reads_retries_at_once(broken: str) -> None:
    """Not only a missing Secret created later: a Secret with the wrong keys, fixed by its
    owner, triggers a run within seconds instead of waiting for the retry timer."""
    world = World()
    name, fixed_data = CREDS_SECRET, {"client_id": b64("id-1"), "client_secret": b64("s")}
    spec: dict[str, Any] = {}
    if broken == "wrong key names":
        world.kube.put(NS, {"metadata": {"name": name, "namespace": NS}, "data": {"id": "x"}})
    else:
        name, fixed_data = "idp-ca", {"ca.crt": b64("-----BEGIN CERTIFICATE-----")}
        world.kube.put(NS, {"metadata": {"name": name, "namespace": NS}, "data": {}})
        spec = {"tls": {"caBundleSecretRef": {"name": name}}}
    await world.refresher.observe(world.body(**spec))
    due = await world.refresher._run(KEY)
    assert world.kube.ready()["status"] == "False"
    assert due is not None and due > world.clock.now + 60  # a slow retry: a person must act
    world.refresher.scheduler.schedule(KEY, due)

    fixed = copy.deepcopy(world.kube.secrets[NS, name])
    fixed["data"] = fixed_data
    world.kube.put(NS, fixed)
    world.refresher.secret_changed(NS, name, world.kube.secrets[NS, name])

    assert world.refresher.scheduler.due_time(KEY) == world.clock.now


async def test_transient_failure_without_a_token_is_not_ready() -> None:
    world = World()
    world.tokens.respond = lambda creds, now: OAuthError(
        Outcome.TRANSIENT, "ProviderUnreachable", "timed out"
    )
    due = await world.start()
    assert world.kube.ready()["status"] == "False"
    assert world.kube.ready()["reason"] == "ProviderUnreachable"
    assert due is not None and due - world.clock.now <= schedule.BACKOFF_BASE


async def test_expired_token_with_transient_failure_is_not_ready() -> None:
    world = World()
    await world.start()
    world.clock.now = START + LIFETIME + 10
    world.tokens.respond = lambda creds, now: OAuthError(
        Outcome.TRANSIENT, "ProviderUnavailable", "HTTP 503"
    )
    await world.refresher._run(KEY)
    assert world.kube.ready()["status"] == "False"


async def test_missing_credentials_secret_is_reported() -> None:
    world = World()
    del world.kube.secrets[NS, CREDS_SECRET]
    due = await world.start()
    assert world.tokens.calls == []
    assert world.kube.ready()["reason"] == "CredentialsNotFound"
    assert due is not None and due > world.clock.now


async def test_invalid_spec_is_reported_and_not_scheduled() -> None:
    world = World()
    await world.refresher.observe(world.body(issuer="https://also.example.com"))
    assert world.kube.ready()["reason"] == "InvalidSpec"
    assert "exactly one" in world.kube.ready()["message"]
    assert world.refresher.scheduler.due_time(KEY) is None
    assert await world.refresher._run(KEY) is None
    assert world.tokens.calls == []


async def test_absurd_token_lifetime_does_not_crash_the_run() -> None:
    """A provider that answers with an enormous expires_in must not make the run raise (the
    scheduler would then re-run it every 60 s, exchanging each time, with no status)."""
    world = World()
    world.tokens.respond = lambda creds, now: parse_token_response(
        b'{"access_token": "a", "expires_in": 100000000000000}', now, 3600.0
    )
    due = await world.start()
    assert due is not None
    assert KEY in world.kube.statuses


# --- Secret changes -----------------------------------------------------------------------


async def run_and_schedule(world: World) -> float:
    due = await world.refresher._run(KEY)
    assert due is not None
    world.refresher.scheduler.schedule(KEY, due)  # what the scheduler does with the answer
    return due


async def test_own_rotation_write_does_not_trigger_a_run() -> None:
    world = World("refresh_token")
    await world.refresher.observe(world.body())
    due = await run_and_schedule(world)
    world.clock.now += 5

    # The watch reports the credentials Secret we just wrote (refresh token r2).
    creds_secret = await world.kube.get_secret(NS, CREDS_SECRET)
    world.refresher.secret_changed(NS, CREDS_SECRET, creds_secret)
    assert world.refresher.scheduler.due_time(KEY) == due

    # Unrelated Secrets and our own output Secret do not trigger either.
    world.refresher.secret_changed(NS, "unrelated", {"data": {}})
    world.refresher.secret_changed(
        NS, OUTPUT_SECRET, await world.kube.get_secret(NS, OUTPUT_SECRET)
    )
    assert world.refresher.scheduler.due_time(KEY) == due


async def test_changed_credentials_trigger_a_prompt_exchange() -> None:
    world = World()
    await world.refresher.observe(world.body())
    due = await run_and_schedule(world)
    world.clock.now += schedule.MIN_EXCHANGE_INTERVAL

    creds_secret = await world.kube.get_secret(NS, CREDS_SECRET)
    assert creds_secret is not None
    creds_secret["data"]["client_secret"] = b64("secret-2")
    world.kube.put(NS, creds_secret)
    world.refresher.secret_changed(NS, CREDS_SECRET, creds_secret)

    assert world.refresher.scheduler.due_time(KEY) == world.clock.now < due
    await world.refresher._run(KEY)
    assert [c.client_secret for c in world.tokens.calls] == ["secret-1", "secret-2"]


async def test_fixed_credentials_after_invalid_client_retry_at_once() -> None:
    world = World()
    world.tokens.respond = invalid_client
    await world.refresher.observe(world.body())
    await run_and_schedule(world)

    creds_secret = await world.kube.get_secret(NS, CREDS_SECRET)
    assert creds_secret is not None
    creds_secret["data"]["client_id"] = b64("id-2")
    world.kube.put(NS, creds_secret)
    world.refresher.secret_changed(NS, CREDS_SECRET, creds_secret)
    assert world.refresher.scheduler.due_time(KEY) == world.clock.now

    world.tokens.respond = world.tokens.issue
    world.clock.now += schedule.MIN_EXCHANGE_INTERVAL  # the floor between two exchanges
    await world.refresher._run(KEY)
    assert world.kube.ready()["status"] == "True"
    assert [e[:2] for e in world.kube.events] == [
        ("Warning", "InvalidClient"),
        ("Normal", "TokenIssued"),
    ]


async def test_deleted_output_secret_triggers_a_new_token() -> None:
    world = World()
    await world.refresher.observe(world.body())
    due = await run_and_schedule(world)
    world.clock.now += 5

    del world.kube.secrets[NS, OUTPUT_SECRET]
    world.refresher.secret_changed(NS, OUTPUT_SECRET, None)
    assert world.refresher.scheduler.due_time(KEY) == world.clock.now < due

    world.clock.now += schedule.MIN_EXCHANGE_INTERVAL
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 2
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-2"


async def test_forget_stops_scheduling() -> None:
    world = World()
    await world.refresher.observe(world.body())
    await run_and_schedule(world)
    world.refresher.forget(KEY)
    assert world.refresher.scheduler.due_time(KEY) is None
    assert await world.refresher._run(KEY) is None
    world.refresher.secret_changed(NS, CREDS_SECRET, None)  # no longer a reader: no error
    assert world.refresher.scheduler.due_time(KEY) is None


async def test_outcome_unknown_is_said_as_such_not_as_an_ordinary_retry() -> None:
    """A refresh whose answer never came back: the token in place keeps the client Ready,
    but the reason, a Warning Event and the metric say that the grant may need a login."""
    world = World("refresh_token")
    await world.start()
    before = REGISTRY.get_sample_value("oauth_token_operator_exchanges_outcome_unknown_total")
    world.tokens.respond = lambda creds, now: OAuthError(
        Outcome.TRANSIENT, reasons.EXCHANGE_OUTCOME_UNKNOWN, "no answer after the request"
    )
    world.clock.now += LIFETIME - 60

    await world.refresher._run(KEY)

    condition = world.kube.ready()
    assert (condition["status"], condition["reason"]) == ("True", "ExchangeOutcomeUnknown")
    assert "new login" in condition["message"]
    assert world.kube.events[-1][:2] == ("Warning", "ExchangeOutcomeUnknown")
    after = REGISTRY.get_sample_value("oauth_token_operator_exchanges_outcome_unknown_total")
    assert (after or 0) == (before or 0) + 1
    # The rotated-or-not token is still r2 (the only one there is) and the claim is gone.
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r2"
    assert CLAIM_ANNOTATION not in world.kube.secrets[NS, CREDS_SECRET]["metadata"].get(
        "annotations", {}
    )


async def test_status_names_no_output_secret_that_was_never_written() -> None:
    """The SECRET column must not point at a Secret a failed first run never created."""
    world = World()
    world.tokens.respond = invalid_client
    await world.start()
    assert (NS, OUTPUT_SECRET) not in world.kube.secrets
    assert "secretName" not in world.kube.statuses[KEY]

    world.tokens.respond = world.tokens.issue
    world.refresher.clients[KEY].force = True
    world.clock.now += schedule.MIN_EXCHANGE_INTERVAL
    await world.refresher._run(KEY)
    assert world.kube.statuses[KEY]["secretName"] == OUTPUT_SECRET


async def test_no_trigger_brings_two_exchanges_closer_than_the_floor() -> None:
    """Secret events, spec changes and retries may all ask for a run at once; the exchanges
    of one client stay MIN_EXCHANGE_INTERVAL apart, whatever asks."""
    world = World()
    await world.start()
    for _ in range(5):
        world.clock.now += 1
        world.refresher.clients[KEY].force = True
        due = await world.refresher._run(KEY)
        assert due == START + schedule.MIN_EXCHANGE_INTERVAL
    assert len(world.tokens.calls) == 1
    world.clock.now = START + schedule.MIN_EXCHANGE_INTERVAL
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 2


@pytest.mark.parametrize(
    "answer",
    [
        b'{"access_token": "opaque", "expires_in": 1}',
        # A JWT whose exp is already past, and no expires_in.
        b'{"access_token": "e30.eyJleHAiOiAxNjAwMDAwMDAwfQ.c2ln"}',
    ],
)
async def test_a_token_too_short_lived_is_reported_not_chased(answer: bytes) -> None:
    world = World()
    world.tokens.respond = lambda creds, now: parse_token_response(answer, now, LIFETIME)
    due = await world.start()

    condition = world.kube.ready()
    assert (condition["status"], condition["reason"]) == ("False", "TokenTooShortLived")
    assert "lifetime" in condition["message"]
    assert due is not None and due - START >= schedule.HUMAN_RETRY_BASE / 2  # not a tight loop


async def test_a_standby_replica_runs_nothing_and_takes_over_what_exists_then() -> None:
    world = World()
    await world.refresher.observe(world.body())
    await run_and_schedule(world)
    world.refresher.stand_by()
    assert world.refresher.scheduler.due_time(KEY) is None
    assert await world.refresher._run(KEY) is None  # holds no clients
    world.refresher.secret_changed(NS, OUTPUT_SECRET, None)  # a peer's business now
    assert len(world.refresher.scheduler) == 0

    # Taking over: only what exists now runs, from the Secrets (no token request).
    world.clock.now += 600
    await world.refresher.take_over([world.body()])
    assert world.refresher.scheduler.due_time(KEY) == world.clock.now
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 1

    world.refresher.stand_by()
    await world.refresher.take_over([])  # deleted while we stood by
    assert await world.refresher._run(KEY) is None


# --- reads from memory -------------------------------------------------------------------


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
async def test_a_refresh_reads_no_secret_from_the_api_server(grant: str) -> None:
    """The first run reads the credentials only (a new client has no output Secret to
    read); every later refresh is served from memory (the operator's own writes and the
    Secret watch keep it)."""
    world = World(grant)
    await world.start()
    assert world.kube.reads == [CREDS_SECRET]
    world.kube.reads.clear()
    world.kube.writes.clear()

    for _ in range(3):
        world.clock.now += LIFETIME
        await world.refresher._run(KEY)

    assert world.kube.reads == []
    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-4"
    # Writes: the output Secret (and, rotating, the claim and the rotated token) per refresh.
    per_refresh = 3 if grant == "refresh_token" else 1
    assert len(world.kube.writes) == 3 * per_refresh


async def test_a_refresh_token_rotated_elsewhere_unseen_by_the_watch_is_never_sent() -> None:
    """The memory holds r2; the CLI (or a sibling) rotated it to r3 and the watch has not
    told us yet. The claim is a compare-and-swap on the version read, so it fails, the
    Secret is read afresh, and r3 is what the provider gets: never the revoked r2."""
    world = World("refresh_token")
    await world.start()
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r2"
    creds = copy.deepcopy(world.kube.secrets[NS, CREDS_SECRET])
    creds["data"]["refresh_token"] = b64("r3")
    world.kube.put(NS, creds)  # no secret_changed: the event is still on its way

    world.clock.now += LIFETIME
    await world.refresher._run(KEY)

    assert world.tokens.refresh_tokens_sent == ["r1", "r3"]
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r4"
    assert world.kube.ready()["status"] == "True"


async def test_an_output_secret_deleted_unseen_by_the_watch_is_written_again() -> None:
    world = World()
    await world.start()
    del world.kube.secrets[NS, OUTPUT_SECRET]  # the deletion event is still on its way

    world.clock.now += LIFETIME
    due = await world.refresher._run(KEY)  # the replace answers 404: a retry follows
    for _ in range(3):  # the retry, and the per-client exchange floor
        assert due is not None
        world.clock.now = due
        if (NS, OUTPUT_SECRET) in world.kube.secrets:
            break
        due = await world.refresher._run(KEY)

    assert world.kube.data(OUTPUT_SECRET)["access_token"] == "access-3"
    assert world.kube.ready()["status"] == "True"


async def test_secrets_no_client_uses_are_not_kept() -> None:
    world = World()
    await world.start()
    world.refresher.secret_changed(NS, "unrelated", {"metadata": {"name": "unrelated"}})
    assert len(world.refresher.secrets) == 2  # the credentials and the output Secret
    world.refresher.forget(KEY)
    assert len(world.refresher.secrets) == 0


# --- output templates ---------------------------------------------------------------------


TEMPLATED = {
    "templates": {
        "header": "Authorization: {{ token_type }} {{ access_token }}",
        "who": "{{ values.user }}@{{ values.registry }}",
    },
    "values": {"user": "literal-user"},
    "valuesFrom": {"configMapName": "settings"},
}


async def test_templates_render_from_the_token_the_configmap_and_literal_values() -> None:
    world = World()
    world.kube.config_maps[NS, "settings"] = {
        "data": {"registry": "registry.example.com", "user": "configmap-user"}
    }
    await world.refresher.observe(world.body(secret=TEMPLATED))
    await world.refresher._run(KEY)

    data = world.kube.data(OUTPUT_SECRET)
    assert data["header"] == "Authorization: Bearer access-1"
    assert data["who"] == "literal-user@registry.example.com"  # literal values win
    assert data["access_token"] == "access-1"  # the fixed keys stay
    assert world.kube.ready()["status"] == "True"


async def test_a_template_that_cannot_render_costs_no_token_request() -> None:
    """The ConfigMap is missing: TemplateFailed before the exchange, so a refresh token is
    not rotated for a Secret that cannot be written."""
    world = World("refresh_token")
    await world.refresher.observe(world.body(secret=TEMPLATED))
    await world.refresher._run(KEY)

    assert world.tokens.calls == []
    ready = world.kube.ready()
    assert (ready["status"], ready["reason"]) == ("False", reasons.TEMPLATE_FAILED)
    assert "ConfigMap settings" in ready["message"]

    world.kube.config_maps[NS, "settings"] = {"data": {"registry": "r.example.com"}}
    world.clock.now += 3600
    await world.refresher._run(KEY)
    assert len(world.tokens.calls) == 1
    assert world.kube.data(OUTPUT_SECRET)["who"] == "literal-user@r.example.com"


async def test_a_template_that_does_not_compile_is_an_invalid_spec_with_its_line() -> None:
    world = World()
    broken = {"templates": {"env": "TOKEN={{ access_token }}\nTYPE={{ token_type "}}
    await world.refresher.observe(world.body(secret=broken))

    ready = world.kube.ready()
    assert (ready["status"], ready["reason"]) == ("False", reasons.INVALID_SPEC)
    assert ready["message"].startswith("spec.secret.templates[env], line 2:")
    assert world.tokens.calls == []


@pytest.mark.parametrize(
    ("secret", "words"),
    [
        ({"type": "kubernetes.io/dockerconfigjson"}, "needs key .dockerconfigjson"),
        (
            {"type": "kubernetes.io/dockerconfigjson", "templates": {".dockerconfigjson": "{"}},
            "must render to JSON",
        ),
        ({"type": "kubernetes.io/tls"}, "needs keys tls.crt and tls.key"),
        ({"templates": {"broken": '{{ "\\ud800" }}'}}, "not valid UTF-8"),
        (
            {
                "values": {"big": "x" * 200_000},
                "templates": {f"k{i}": "{{ values.big }}" for i in range(6)},
            },
            "refuses more than 1048576 in all",
        ),
    ],
)
async def test_an_output_the_api_server_would_refuse_costs_no_token_request(
    secret: dict[str, Any], words: str
) -> None:
    world = World("refresh_token")
    await world.refresher.observe(world.body(secret=secret))
    await world.refresher._run(KEY)
    assert world.tokens.calls == []  # no exchange, no rotation of the refresh token
    condition = world.kube.ready()
    assert condition["status"] == "False"
    assert words in condition["message"]


async def test_a_stop_writes_a_held_refresh_token_once_the_api_server_answers(
    no_backoff: None,
) -> None:
    """SIGTERM with a rotated refresh token still in memory: after the drain, the stop
    retries its write for what is left of the drain timeout instead of dropping it."""
    world = World("refresh_token")
    world.kube.failing_data.add(CREDS_SECRET)
    await world.start()
    assert world.refresher.clients[KEY].unpersisted_refresh_token == "r2"

    assert await world.refresher.persist_held(0.0) == 1  # no time left: reported lost
    world.kube.failing_data.clear()
    assert await world.refresher.persist_held(5.0) == 0
    assert world.kube.data(CREDS_SECRET)["refresh_token"] == "r2"
    assert world.tokens.refresh_tokens_sent == ["r1"]


async def test_when_the_api_server_is_back_clients_that_failed_for_it_go_at_once() -> None:
    """During an outage the backoff of every client grows; the first run that gets through
    wakes the others, so their tokens are written before they expire."""
    world = World()
    await world.refresher.observe(world.body())
    other = client_body()
    other["metadata"] = {**other["metadata"], "name": "other", "uid": "uid-other"}
    other["spec"]["secret"] = {"name": "other-token"}
    await world.refresher.observe(other)
    world.kube.down = True
    due = await world.refresher._run(KEY)
    other_due = await world.refresher._run(ObjectKey(NS, "other"))
    assert due is not None and other_due is not None
    world.refresher.scheduler.schedule(ObjectKey(NS, "other"), other_due)
    assert other_due > world.clock.now

    world.kube.down = False
    world.clock.now = due
    await world.refresher._run(KEY)
    assert world.kube.ready()["status"] == "True"
    assert world.refresher.scheduler.due_time(ObjectKey(NS, "other")) == world.clock.now
