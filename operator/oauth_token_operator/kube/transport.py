"""The Kubernetes client's calls as bodies or one KubeError: every transport failure (the
API server down, restarting, cut off mid-answer) and every non-2xx answer becomes a
KubeError that names the failure, never a body that might echo Secret data."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from oauth_token_operator.kube.errors import UNREACHABLE, KubeError

# What the Kubernetes client raises when the API server is down, restarting or cut off
# mid-answer: aiohttp's errors, timeouts and socket/TLS errors (ssl.SSLError is an OSError),
# and the client's own ApiException. All become one KubeError, so every caller that handles
# an API failure handles these too (a rotated refresh token in hand is kept, not dropped).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ApiException)


def unreachable(exc: BaseException) -> KubeError:
    """The KubeError for a call that got no (whole) answer. The message names the error
    type and aiohttp's text (host, port, errno), never a request or response body."""
    if isinstance(exc, ApiException) and exc.status:
        return KubeError(int(exc.status), str(exc.reason or "")[:300])
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return KubeError(UNREACHABLE, f"the Kubernetes API did not answer ({what})")


async def read_body(call: Any) -> bytes:
    """Awaits a client call made with _preload_content=False and returns its body, raising
    KubeError for any non-2xx answer."""
    try:
        response = await call
    except TRANSPORT_ERRORS as exc:
        raise unreachable(exc) from None
    try:
        try:
            body: bytes = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise unreachable(exc) from None
        raise_for_status(response.status, response.reason or "", body)
        return body
    finally:
        response.release()


async def read_json(call: Any) -> Any:
    """As read_body, parsed as JSON."""
    body = await read_body(call)
    return json.loads(body) if body else None


def raise_for_status(status: int, reason: str, body: bytes) -> None:
    if not 200 <= status < 300:
        status_object = False
        with contextlib.suppress(ValueError, AttributeError):
            reason = json.loads(body).get("message", reason)
            status_object = True
        # An object that is not there comes with a Status; a path no API serves, with
        # "404 page not found".
        kind_missing = status == 404 and not status_object
        raise KubeError(status, str(reason)[:300], kind_missing)


async def read_or_none(read: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """A namespaced object through a client `read_namespaced_*` method; None if absent."""
    try:
        body: dict[str, Any] = await read_json(read(name, namespace, _preload_content=False))
    except KubeError as exc:
        if exc.not_found:
            return None
        raise
    return body
