"""A Secret watch, outside kopf: list in pages, then watch from the list's version, each
Secret handed to a callback as it arrives. secret_feed runs two per namespace scope: full
bodies of the Secrets the operator labels, metadata only of the rest.

kopf queues every listed object, with its managedFields, for a per-object worker before any
is processed: after a restart at 10,000 clients that held both lists at once and left the
operator ~110 MB larger than before (bench_convergence), and each Secret event cost kopf's
per-object machinery although the operator only notes it. kopf still watches OAuthClients.

A watch that ends (server timeout, dropped connection, apiserver restart) resumes from the
last version seen; one too old to resume (410 Gone) lists again, and the Secrets that
vanished in between are reported deleted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import SecretWatchAPI

log = logging.getLogger(__name__)

PAGE = 500  # full bodies: the operator's own Secrets, a few KB each
METADATA_PAGE = 1000  # metadata only, ~1 KB per Secret whatever its data
SERVER_TIMEOUT = 300  # seconds a watch request lasts before the API server ends it
BACKOFF = (1.0, 30.0)  # first and longest wait after a failure

Changed = Callable[[str, str, dict[str, Any] | None], None]
Key = tuple[str, str]


class Gone(Exception):
    """The version to resume from is too old (410): list again."""


class SecretWatch:
    def __init__(
        self,
        api: SecretWatchAPI,
        namespace: str | None,
        changed: Changed,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        selector: str = "",
        metadata_only: bool = False,
        known: Callable[[], Iterable[Key]] | None = None,
        batch: float = 0.0,
    ) -> None:
        """`known`: the Secrets to report deleted when a relist no longer shows them; None
        keeps the name of every Secret seen for that (cheap for the operator's own Secrets,
        not for every Secret of a cluster)."""
        self.api = api
        self.namespace = namespace
        self.changed = changed
        self.sleep = sleep
        self.selector = selector
        self.metadata_only = metadata_only
        self.known = known
        self.batch = batch  # seconds events may gather before a read (secret_lists)
        self._names: set[Key] = set()
        self._version: str | None = None  # to resume from; None: list (again)

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self._version is None:
                    self._version = await self._list()
                await self._watch()
                failures = 0
            except Gone:
                self._version = None
            except Exception as exc:
                # API, connection and JSON errors alike: the watch must outlive them all, or
                # credentials changes and deleted output Secrets would go unseen.
                failures += 1
                delay = min(BACKOFF[0] * 2 ** (failures - 1), BACKOFF[1])
                log.warning(
                    "watching Secrets (%s) in %s failed (%s: %s); again in %.0fs",
                    self.selector or "all",
                    self.namespace or "all namespaces",
                    type(exc).__name__,
                    str(exc)[:200],
                    delay,
                )
                await self.sleep(delay)

    async def _list(self) -> str:
        seen: set[Key] = set()
        token: str | None = None
        size = METADATA_PAGE if self.metadata_only else PAGE
        while True:
            page = await self.api.list_secrets(
                self.namespace, size, token, self.selector, self.metadata_only
            )
            for secret in page.get("items") or ():
                meta = secret.get("metadata") or {}
                key = (meta.get("namespace", ""), meta.get("name", ""))
                seen.add(key)
                self.changed(*key, secret)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        known = self._names if self.known is None else set(self.known())
        for key in known - seen:  # deleted while nobody watched
            if self.namespace is None or key[0] == self.namespace:
                self.changed(*key, None)
        if self.known is None:
            self._names = seen
        return str(metadata.get("resourceVersion", ""))

    async def _watch(self) -> None:
        """Until the server ends the stream; self._version follows every event, so that a
        failure resumes after the last one seen."""
        assert self._version is not None
        stream = self.api.watch_secrets(
            self.namespace,
            self._version,
            SERVER_TIMEOUT,
            self.selector,
            self.metadata_only,
            self.batch,
        )
        async for event in stream:
            kind = event.get("type")
            body = event.get("object") or {}
            if kind == "ERROR":
                if body.get("code") == 410:
                    raise Gone
                raise KubeError(int(body.get("code") or 500), str(body.get("message", ""))[:300])
            meta = body.get("metadata") or {}
            self._version = meta.get("resourceVersion") or self._version
            if kind == "BOOKMARK":
                continue
            key = (meta.get("namespace", ""), meta.get("name", ""))
            if kind == "DELETED":
                self._names.discard(key)
                self.changed(*key, None)
            elif kind in ("ADDED", "MODIFIED"):
                if self.known is None:
                    self._names.add(key)
                self.changed(*key, body)
