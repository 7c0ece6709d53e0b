"""Secret LISTs and WATCHes with an Accept of their own: metadata-only requests ask for
PartialObjectMetadata, the label selector goes to the server, and watch events split across
reads (or several in one) come out whole, with the connection paused between reads."""

from __future__ import annotations

import json
from typing import Any

from oauth_token_operator.kube.secret_lists import METADATA_LIST, METADATA_WATCH, SecretLists


class Transport:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def is_closing(self) -> bool:
        return False


class Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def read_nowait(self) -> bytes:
        return b""


class Connection:
    def __init__(self) -> None:
        self.transport = Transport()


class Response:
    status = 200
    reason = "OK"

    def __init__(self, chunks: list[bytes]) -> None:
        self.content = Content(chunks)
        self.connection = Connection()
        self.released = False

    async def read(self) -> bytes:
        return b"".join(self.content.chunks)

    def release(self) -> None:
        self.released = True


class ApiClient:
    def __init__(self, response: Response) -> None:
        self.response = response
        self.calls: list[dict[str, Any]] = []

    async def call_api(self, path: str, method: str, **kwargs: Any) -> Response:
        self.calls.append({"path": path, "method": method, **kwargs})
        return self.response


def event(name: str) -> bytes:
    return json.dumps({"type": "ADDED", "object": {"metadata": {"name": name}}}).encode()


async def test_a_watch_yields_whole_events_across_reads_and_pauses_between_them() -> None:
    a, b, c = event("a"), event("b"), event("c")
    response = Response([a[:10], a[10:] + b"\n" + b + b"\n" + c[:5], c[5:] + b"\n"])
    api = ApiClient(response)
    lists = SecretLists(api)  # type: ignore[arg-type]
    names = [
        e["object"]["metadata"]["name"]
        async for e in lists.watch_secrets("ns", "10", 300, "x!=y", metadata_only=True, batch=0)
    ]
    assert names == ["a", "b", "c"]
    call = api.calls[0]
    assert call["path"] == "/api/v1/namespaces/ns/secrets"
    assert call["header_params"] == {"Accept": METADATA_WATCH}
    assert ("labelSelector", "x!=y") in call["query_params"]
    assert ("resourceVersion", "10") in call["query_params"]
    assert response.released and response.connection.transport.paused == 0


async def test_a_batched_watch_pauses_the_connection_between_reads() -> None:
    response = Response([event("a") + b"\n", event("b") + b"\n"])
    lists = SecretLists(ApiClient(response))  # type: ignore[arg-type]
    events = [e async for e in lists.watch_secrets(None, "1", 300, batch=0.001)]
    assert len(events) == 2
    transport = response.connection.transport
    assert transport.paused == transport.resumed == 2


async def test_over_tls_the_socket_itself_is_paused() -> None:
    """asyncio's TLS transport, paused, still reads the socket for every event."""

    class SSLProtocol:
        def __init__(self) -> None:
            self._transport = Transport()

    response = Response([event("a") + b"\n"])
    tls = response.connection.transport
    tls._ssl_protocol = SSLProtocol()  # type: ignore[attr-defined]
    lists = SecretLists(ApiClient(response))  # type: ignore[arg-type]
    assert len([e async for e in lists.watch_secrets(None, "1", 300, batch=0.001)]) == 1
    assert tls._ssl_protocol._transport.paused == 1  # type: ignore[attr-defined]
    assert tls.paused == 0


async def test_a_metadata_list_asks_for_partial_object_metadata() -> None:
    page = {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "5"}}
    api = ApiClient(Response([json.dumps(page).encode()]))
    lists = SecretLists(api)  # type: ignore[arg-type]
    assert await lists.list_secrets(None, 1000, "tok", "x!=y", metadata_only=True) == page
    call = api.calls[0]
    assert call["path"] == "/api/v1/secrets"
    assert call["header_params"] == {"Accept": METADATA_LIST}
    assert set(call["query_params"]) == {
        ("limit", 1000),
        ("continue", "tok"),
        ("labelSelector", "x!=y"),
    }
