"""Two Secret watches per namespace scope, joined into one feed of Secret changes: full
bodies of the Secrets that carry the operator's label (its output Secrets), metadata only of
all others (credentials, CA bundles, client certificates, subject tokens: users' Secrets,
which the operator must not label, and the cluster's many unrelated ones, Helm releases of
hundreds of KB among them). cert-manager 1.12 does the same (its design
20221205-memory-management): memory, start-up and API server load then follow the clients,
not the cluster's Secrets.

A metadata event about a Secret some client reads, with a resourceVersion other than the
body held, brings a GET of the body; events about any other Secret cost nothing and are not
kept, not even their names (deletions missed during a 410 are found from the bodies held).

A Secret that gains or loses the label moves between the watches: DELETED in one, ADDED in
the other, in either order. So a DELETED of a Secret a client uses is never taken at its
word: a GET tells a move (the body, reported if it changed) from a deletion (404)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from oauth_token_operator import metrics
from oauth_token_operator.kube.ports import SecretWatchAPI
from oauth_token_operator.kube.secret_cache import CachedSecrets
from oauth_token_operator.kube.secret_watch import BACKOFF, Changed, Key, SecretWatch
from oauth_token_operator.resource.spec import MANAGED_BY_LABEL, MANAGED_BY_VALUE

log = logging.getLogger(__name__)

LABELLED = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
UNLABELLED = f"{MANAGED_BY_LABEL}!={MANAGED_BY_VALUE}"  # the rest: the two never overlap
# Metadata events are read once a second at most: the cluster's churn of unrelated Secrets
# costs a read per second, not one per event; a rotated credentials Secret is seen ≤ 1 s later.
METADATA_BATCH = 1.0


class SecretReader(Protocol):
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...


def _version(body: dict[str, Any] | None) -> str | None:
    return None if body is None else (body.get("metadata") or {}).get("resourceVersion")


class SecretFeed:
    """`changed` gets every full body (and deletion) the operator may need, as the single
    Secret watch's callback did; `cache` says which Secrets clients use and what is held."""

    def __init__(
        self,
        reader: SecretReader,
        cache: CachedSecrets,
        changed: Changed,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.reader = reader
        self.cache = cache
        self.changed = changed
        self.sleep = sleep
        self._reads: dict[Key, asyncio.Task[None]] = {}
        self._again: set[Key] = set()  # to read (again): an event came after the last read

    def watches(self, lists: SecretWatchAPI, namespace: str | None) -> list[SecretWatch]:
        return [
            SecretWatch(lists, namespace, self.labelled, self.sleep, selector=LABELLED),
            SecretWatch(
                lists,
                namespace,
                self.unlabelled,
                self.sleep,
                selector=UNLABELLED,
                metadata_only=True,
                known=lambda: self.cache.held(labelled=False),
                batch=METADATA_BATCH,
            ),
        ]

    def labelled(self, namespace: str, name: str, body: dict[str, Any] | None) -> None:
        """From the full-body watch."""
        key = (namespace, name)
        if key in self._reads:
            self._again.add(key)  # what the read in flight brings may be older than this
        if body is None and self.cache.tracked(namespace, name):
            self._read(key)  # deleted, or lost the label
        else:
            self.changed(namespace, name, body)

    def unlabelled(self, namespace: str, name: str, meta: dict[str, Any] | None) -> None:
        """From the metadata watch: `meta` is a PartialObjectMetadata, or None (deleted)."""
        if not self.cache.tracked(namespace, name):
            return  # none of our business: not even its name is kept
        if meta is None or _version(meta) != self.cache.version(namespace, name):
            self._read((namespace, name))

    def cancel(self) -> None:
        for task in self._reads.values():
            task.cancel()

    def _read(self, key: Key) -> None:
        self._again.add(key)
        if key not in self._reads:
            self._reads[key] = asyncio.create_task(self._reading(key), name=f"read {key}")

    async def _reading(self, key: Key) -> None:
        failures = 0
        try:
            while key in self._again:
                self._again.discard(key)
                try:
                    body = await self.reader.get_secret(*key)
                except Exception as exc:  # the next event, or this retry, reads it
                    failures += 1
                    delay = min(BACKOFF[0] * 2 ** (failures - 1), BACKOFF[1])
                    log.warning(
                        "reading Secret %s/%s failed (%s: %s); again in %.0fs",
                        *key,
                        type(exc).__name__,
                        str(exc)[:200],
                        delay,
                    )
                    self._again.add(key)
                    await self.sleep(delay)
                    continue
                metrics.SECRET_FETCHES.inc()
                if key in self._again or not self.cache.tracked(*key):
                    continue  # a newer event came meanwhile (read again), or nobody needs it
                if _version(body) != self.cache.version(*key):
                    self.changed(*key, body)
        finally:
            del self._reads[key]
