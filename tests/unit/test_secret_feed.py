"""The two Secret watches joined: full bodies for the operator's labelled Secrets, metadata
for the rest, and a GET only for a Secret a client uses whose version changed. A Secret that
gains or loses the label (DELETED in one watch, ADDED in the other, either order) is never
taken for a deletion; a real deletion is, also one missed during a 410."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from oauth_token_operator import metrics
from oauth_token_operator.kube.secret_cache import CachedSecrets
from oauth_token_operator.kube.secret_feed import LABELLED, UNLABELLED, SecretFeed
from oauth_token_operator.kube.secret_watch import SecretWatch
from oauth_token_operator.resource.spec import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from tests.unit.test_secret_watch import FakeAPI, page

NS = "ns"


def body(name: str, version: str, labelled: bool = False, value: str = "djE=") -> dict[str, Any]:
    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE} if labelled else {}
    return {
        "metadata": {"namespace": NS, "name": name, "resourceVersion": version, "labels": labels},
        "data": {"client_secret": value},
    }


def meta(name: str, version: str) -> dict[str, Any]:
    """A PartialObjectMetadata, as the metadata watch shows a Secret."""
    return {"kind": "PartialObjectMetadata", "metadata": body(name, version)["metadata"]}


class Server:
    """The API server's current Secrets, for GETs; `gate` holds every GET while set."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.gets: list[str] = []
        self.gate: asyncio.Event | None = None
        self.failures = 0

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append(name)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("reset")
        return self.secrets.get(name)

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("the feed never writes")

    replace_secret = create_secret


class Harness:
    def __init__(self, *tracked: str) -> None:
        self.tracked = set(tracked)
        self.server = Server()
        self.cache = CachedSecrets(self.server, lambda ns, name: name in self.tracked)
        self.reported: list[tuple[str, str | None]] = []
        self.sleeps: list[float] = []

        def changed(namespace: str, name: str, secret: dict[str, Any] | None) -> None:
            # As Refresher.secret_changed: the cache first, then what a client would see.
            self.cache.noted(namespace, name, secret)
            version = None if secret is None else secret["metadata"]["resourceVersion"]
            self.reported.append((name, version))

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.feed = SecretFeed(self.server, self.cache, changed, sleep)

    def store(self, secret: dict[str, Any]) -> None:
        self.server.secrets[secret["metadata"]["name"]] = secret

    async def settled(self) -> None:
        while self.feed._reads:
            await asyncio.gather(*self.feed._reads.values())

    def held(self, name: str) -> str | None:
        return self.cache.version(NS, name)


async def test_unrelated_secrets_cost_no_read_and_are_not_kept() -> None:
    h = Harness("creds")
    for i in range(100):
        h.feed.unlabelled(NS, f"helm-release-{i}", meta(f"helm-release-{i}", str(i)))
        h.feed.unlabelled(NS, f"helm-release-{i}", None)
    await h.settled()
    assert h.server.gets == [] and h.reported == [] and len(h.cache) == 0


async def test_a_referenced_secret_created_after_its_client_is_read_and_reported() -> None:
    h = Harness("creds")
    assert await h.cache.get_secret(NS, "creds") is None  # the client's first run: absent
    h.store(body("creds", "5"))
    h.feed.unlabelled(NS, "creds", meta("creds", "5"))
    await h.settled()
    assert h.server.gets == ["creds", "creds"]  # the run's read, then the feed's
    assert h.reported == [("creds", "5")]
    assert h.held("creds") == "5"
    assert (await h.cache.get_secret(NS, "creds") or {})["data"] == {"client_secret": "djE="}


async def test_a_version_already_held_is_not_read_again() -> None:
    """The operator's own write (a rotated refresh token) comes back as a metadata event."""
    h = Harness("creds")
    h.store(body("creds", "7"))
    await h.cache.get_secret(NS, "creds")
    h.feed.unlabelled(NS, "creds", meta("creds", "7"))
    await h.settled()
    assert h.server.gets == ["creds"] and h.reported == []


@pytest.mark.parametrize("labelled_first", [True, False])
async def test_a_secret_that_loses_the_label_is_not_taken_for_deleted(
    labelled_first: bool,
) -> None:
    h = Harness("creds")
    h.feed.labelled(NS, "creds", body("creds", "3", labelled=True))
    h.store(body("creds", "4"))  # the label removed: DELETED there, ADDED here
    events: list[Callable[[], None]] = [
        lambda: h.feed.labelled(NS, "creds", None),
        lambda: h.feed.unlabelled(NS, "creds", meta("creds", "4")),
    ]
    for event in events if labelled_first else events[::-1]:
        event()
        await h.settled()
    assert h.reported == [("creds", "3"), ("creds", "4")]  # never (creds, None)
    assert h.held("creds") == "4"


@pytest.mark.parametrize("labelled_first", [True, False])
async def test_a_secret_that_gains_the_label_is_not_taken_for_deleted(
    labelled_first: bool,
) -> None:
    h = Harness("creds")
    h.store(body("creds", "3"))
    await h.cache.get_secret(NS, "creds")
    h.store(body("creds", "4", labelled=True))
    events: list[Callable[[], None]] = [
        lambda: h.feed.labelled(NS, "creds", body("creds", "4", labelled=True)),
        lambda: h.feed.unlabelled(NS, "creds", None),
    ]
    for event in events if labelled_first else events[::-1]:
        event()
        await h.settled()
    assert ("creds", None) not in h.reported
    assert h.reported[-1] == ("creds", "4") and h.held("creds") == "4"


async def test_a_get_that_finds_the_secret_already_deleted_reports_the_deletion() -> None:
    h = Harness("creds")
    h.store(body("creds", "3"))
    await h.cache.get_secret(NS, "creds")
    del h.server.secrets["creds"]  # changed, then deleted before the GET
    h.feed.unlabelled(NS, "creds", meta("creds", "8"))
    await h.settled()
    assert h.reported == [("creds", None)]
    h.feed.unlabelled(NS, "creds", None)  # the DELETED that follows changes nothing
    await h.settled()
    assert h.reported == [("creds", None)]
    assert await h.cache.get_secret(NS, "creds") is None
    assert h.server.gets == ["creds", "creds", "creds"]  # answered absent from memory


async def test_a_deleted_output_secret_is_reported_once_a_get_confirms_it() -> None:
    h = Harness("out")
    h.feed.labelled(NS, "out", body("out", "3", labelled=True))
    h.feed.labelled(NS, "out", None)
    await h.settled()
    assert h.reported == [("out", "3"), ("out", None)]


async def test_an_event_during_a_read_makes_it_read_again() -> None:
    """A GET in flight may answer a version older than a full body the watch brings
    meanwhile: its answer is dropped and the Secret read again."""
    h = Harness("creds")
    h.store(body("creds", "3"))
    await h.cache.get_secret(NS, "creds")
    h.server.gate = asyncio.Event()
    h.feed.unlabelled(NS, "creds", meta("creds", "4"))
    await asyncio.sleep(0)
    h.store(body("creds", "5", labelled=True))
    h.feed.labelled(NS, "creds", body("creds", "5", labelled=True))
    h.server.gate.set()
    await h.settled()
    assert h.held("creds") == "5"
    assert h.reported == [("creds", "5")]


async def test_a_failed_read_is_retried_with_backoff() -> None:
    h = Harness("creds")
    h.store(body("creds", "3"))
    h.server.failures = 2
    before = metrics.SECRET_FETCHES._value.get()
    h.feed.unlabelled(NS, "creds", meta("creds", "3"))
    await h.settled()
    assert h.sleeps == [1.0, 2.0]
    assert h.reported == [("creds", "3")]
    assert metrics.SECRET_FETCHES._value.get() == before + 1


async def test_gone_relists_and_finds_deletions_of_secrets_in_use_only() -> None:
    """A 410 with deletions in between: the metadata relist no longer shows a Secret whose
    body is held: a GET confirms it is gone. Unrelated Secrets that vanished are not even
    known, and cost nothing."""
    h = Harness("creds", "ca")
    h.store(body("creds", "3"))
    h.store(body("ca", "4"))
    await h.cache.get_secret(NS, "creds")
    await h.cache.get_secret(NS, "ca")
    api = FakeAPI()
    api.lists = [
        [page("10", meta("creds", "3"), meta("ca", "4"), meta("helm-1", "5"))],
        [page("20", meta("ca", "4"))],  # creds and helm-1 deleted while the watch was gone
    ]
    api.watches = [[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]]
    del h.server.secrets["creds"]
    _, watch = h.feed.watches(api, NS)
    assert watch.selector == UNLABELLED and watch.metadata_only
    with pytest.raises(asyncio.CancelledError):
        await watch.run()
    await h.settled()
    assert h.reported == [("creds", None)]
    assert h.server.gets == ["creds", "ca", "creds"]
    assert h.held("ca") == "4" and h.held("creds") is None


async def test_the_labelled_watch_lists_full_bodies_by_label() -> None:
    h = Harness()
    labelled, unlabelled = h.feed.watches(FakeAPI(), None)
    assert (labelled.selector, labelled.metadata_only) == (LABELLED, False)
    assert (unlabelled.selector, unlabelled.metadata_only) == (UNLABELLED, True)
    assert isinstance(labelled, SecretWatch)
