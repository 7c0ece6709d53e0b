"""LIST and WATCH of Secrets for the Secret watch, either as full bodies or as metadata only
(PartialObjectMetadata, as client-go's metadata informers ask for it), filtered by a label
selector on the server.

The client's generated list calls overwrite any Accept header the caller passes, so these
requests go through ApiClient.call_api with the Accept of their own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from oauth_token_operator.kube.transport import TRANSPORT_ERRORS, raise_for_status, unreachable

# The API server answers a metadata-only LIST as a PartialObjectMetadataList and a watch's
# objects as PartialObjectMetadata: no data, so a 500 KB Helm release costs ~1 KB.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def _path(namespace: str | None) -> str:
    return "/api/v1/secrets" if namespace is None else f"/api/v1/namespaces/{namespace}/secrets"


async def _gather_for(response: Any, seconds: float) -> None:
    """Stops reading the connection for a while, so that the events of that time arrive in
    one read: each wakeup (TLS record, aiohttp, the event loop) cost ~0.3 ms, more than the
    JSON of a metadata event, and a cluster's churn of unrelated Secrets (50 updates/s) came
    to ~2 % of a core one read per event. The kernel's socket buffer holds the events."""
    transport = response.connection and response.connection.transport
    if transport is None:
        return
    # Over TLS, pausing asyncio's TLS transport only stops handing data up: it goes on
    # reading the socket (and waking up) for every event. Pause the socket's own transport.
    transport = getattr(getattr(transport, "_ssl_protocol", None), "_transport", transport)
    transport.pause_reading()
    try:
        await asyncio.sleep(seconds)
    finally:
        if not transport.is_closing():
            transport.resume_reading()


class SecretLists:
    """Secret LISTs and WATCHes over one ApiClient (its own pool: watches hold connections)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    async def _call(
        self,
        namespace: str | None,
        query: dict[str, Any],
        accept: str,
        read_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        params = [(k, v) for k, v in query.items() if v not in (None, "")]
        try:
            return await self._api.call_api(
                _path(namespace),
                "GET",
                query_params=params,
                header_params={"Accept": accept},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=read_timeout,
            )
        except TRANSPORT_ERRORS as exc:
            raise unreachable(exc) from None

    async def list_secrets(
        self,
        namespace: str | None,
        limit: int,
        token: str | None = None,
        selector: str = "",
        metadata_only: bool = False,
    ) -> dict[str, Any]:
        """One page of a LIST (namespace None: all namespaces)."""
        query = {"limit": limit, "continue": token, "labelSelector": selector}
        response = await self._call(
            namespace, query, METADATA_LIST if metadata_only else "application/json"
        )
        try:
            body: bytes = await response.read()
            raise_for_status(response.status, response.reason or "", body)
        except TRANSPORT_ERRORS as exc:
            raise unreachable(exc) from None
        finally:
            response.release()
        page: dict[str, Any] = json.loads(body)
        return page

    async def watch_secrets(
        self,
        namespace: str | None,
        resource_version: str,
        server_timeout: int,
        selector: str = "",
        metadata_only: bool = False,
        batch: float = 0.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events after resource_version, as the API server sends them (with
        bookmarks), until it ends the stream after `server_timeout` seconds. `batch`: seconds
        to let events gather in the socket between reads (see _gather_for)."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": server_timeout,
            "labelSelector": selector,
        }
        # No total: the stream lasts server_timeout; a silent connection ends soon after.
        timeout = aiohttp.ClientTimeout(sock_connect=30, sock_read=server_timeout + 30)
        accept = METADATA_WATCH if metadata_only else "application/json"
        response = await self._call(namespace, query, accept, timeout)
        try:
            if not 200 <= response.status < 300:
                raise_for_status(response.status, response.reason or "", await response.read())
            rest = b""
            while chunk := await response.content.readany():
                *lines, rest = (rest + chunk + response.content.read_nowait()).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
                if batch:
                    await _gather_for(response, batch)
        except TRANSPORT_ERRORS as exc:
            raise unreachable(exc) from None
        finally:
            response.release()
