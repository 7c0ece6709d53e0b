"""The Secret watch outside kopf: everything listed is reported, the watch resumes where it
left off after a failure, and a relist after 410 reports what vanished in between."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.secret_watch import SecretWatch


def secret(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


class FakeAPI:
    """Answers LISTs from `lists` (each a list of pages) and watches from `watches` (each a
    list of events, or an exception to raise after them); out of script, it stops the
    test by cancelling."""

    def __init__(self) -> None:
        self.lists: list[list[dict[str, Any]]] = []
        self.watches: list[list[dict[str, Any] | BaseException]] = []
        self.list_calls: list[str | None] = []  # continue tokens
        self.watch_versions: list[str] = []

    async def list_secrets(
        self,
        namespace: str | None,
        limit: int,
        token: str | None = None,
        selector: str = "",
        metadata_only: bool = False,
    ) -> dict[str, Any]:
        self.list_calls.append(token)
        if not token:
            if not self.lists:
                raise asyncio.CancelledError
            self._pages = self.lists.pop(0)
        return self._pages.pop(0)

    async def watch_secrets(
        self,
        namespace: str | None,
        resource_version: str,
        server_timeout: int,
        selector: str = "",
        metadata_only: bool = False,
        batch: float = 0.0,
    ) -> AsyncIterator[dict[str, Any]]:
        self.watch_versions.append(resource_version)
        if not self.watches:
            raise asyncio.CancelledError
        for event in self.watches.pop(0):
            if isinstance(event, BaseException):
                raise event
            yield event


def page(version: str, *items: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": version}
    if token:
        metadata["continue"] = token
    return {"metadata": metadata, "items": list(items)}


async def run(api: FakeAPI) -> tuple[list[tuple[str, str | None]], list[float]]:
    seen: list[tuple[str, str | None]] = []
    sleeps: list[float] = []

    def changed(namespace: str, name: str, body: dict[str, Any] | None) -> None:
        assert namespace == "ns"
        seen.append((name, None if body is None else body["metadata"]["resourceVersion"]))

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    with pytest.raises(asyncio.CancelledError):
        await SecretWatch(api, "ns", changed, sleep).run()
    return seen, sleeps


async def test_lists_every_page_then_watches_from_the_lists_version() -> None:
    api = FakeAPI()
    api.lists = [[page("10", secret("a", "1"), token="t"), page("10", secret("b", "2"))]]
    api.watches = [
        [
            {"type": "ADDED", "object": secret("c", "11")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
        ],
        [{"type": "DELETED", "object": secret("a", "16")}],
    ]
    seen, sleeps = await run(api)
    assert seen == [("a", "1"), ("b", "2"), ("c", "11"), ("a", None)]
    assert api.list_calls == [None, "t"]
    # The server ended the first watch: the next resumes after the bookmark, no relist.
    assert api.watch_versions == ["10", "15", "16"]
    assert sleeps == []


async def test_a_failed_watch_backs_off_and_resumes_where_it_left_off() -> None:
    api = FakeAPI()
    api.lists = [[page("10")]]
    api.watches = [
        [{"type": "MODIFIED", "object": secret("a", "12")}, ConnectionResetError("reset")],
        [KubeError(500, "etcd is down")],
        [KubeError(500, "etcd is down")],
        [{"type": "MODIFIED", "object": secret("a", "13")}],
    ]
    seen, sleeps = await run(api)
    assert seen == [("a", "12"), ("a", "13")]
    assert api.watch_versions == ["10", "12", "12", "12", "13"]
    assert sleeps == [1.0, 2.0, 4.0]  # doubling; a success resets it


async def test_gone_lists_again_and_reports_what_vanished_meanwhile() -> None:
    api = FakeAPI()
    api.lists = [
        [page("10", secret("a", "1"), secret("b", "2"))],
        [page("50", secret("b", "40"), secret("c", "41"))],
    ]
    api.watches = [[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]]
    seen, sleeps = await run(api)
    assert seen == [("a", "1"), ("b", "2"), ("b", "40"), ("c", "41"), ("a", None)]
    assert api.watch_versions == ["10", "50"]
    assert sleeps == []


async def test_a_failed_list_is_retried_and_other_watch_errors_back_off() -> None:
    api = FakeAPI()
    api.lists = [[KubeError(403, "forbidden")], [page("10")]]  # type: ignore[list-item]
    api.watches = [[{"type": "ERROR", "object": {"code": 500, "message": "internal"}}]]

    original = api.list_secrets

    async def list_secrets(
        namespace: str | None,
        limit: int,
        token: str | None = None,
        selector: str = "",
        metadata_only: bool = False,
    ) -> dict[str, Any]:
        answer = await original(namespace, limit, token, selector, metadata_only)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    api.list_secrets = list_secrets  # type: ignore[method-assign]
    seen, sleeps = await run(api)
    assert seen == []
    assert api.watch_versions == ["10", "10"]
    assert sleeps == [1.0, 2.0]
