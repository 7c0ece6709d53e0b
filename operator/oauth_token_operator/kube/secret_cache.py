"""Secret reads served from memory: the Secrets the operator's clients read (credentials,
CA bundles) and write (output Secrets), as the Secret watch last showed them or as the
operator's own last write returned them. A refresh then reads nothing from the API server.

Staleness is safe by construction: every write carries the resourceVersion it was based on
(a replace of a stale body fails with 409), and a failed write drops the entry, so the
conflict paths (custody's claim, the output write's retry) read afresh. A stale client
secret costs one failed exchange, as a read racing the change would; the Secret event that
follows triggers a run with the new one. Only tracked Secrets are kept, trimmed of
managedFields, so memory follows the clients, not the cluster's Secrets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from oauth_token_operator import metrics
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import SecretAPI
from oauth_token_operator.resource.spec import MANAGED_BY_LABEL, MANAGED_BY_VALUE

Key = tuple[str, str]


def _trimmed(body: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {**body, "metadata": metadata}


def _copied(value: Any) -> Any:
    """A copy of a JSON value (dicts, lists, scalars): what copy.deepcopy does for a Secret,
    without its memo and dispatch (a few times faster, and every run asks for one)."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _labelled(body: dict[str, Any] | None) -> bool:
    labels = ((body or {}).get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE)


class CachedSecrets:
    """A SecretAPI over another one. `tracked(namespace, name)` says which Secrets to keep."""

    def __init__(
        self, api: SecretAPI, tracked: Callable[[str, str], bool], keep_labelled: bool = False
    ) -> None:
        self.api = api
        self.tracked = tracked
        # Also keep Secrets that carry the operator's label, tracked or not (yet).
        self.keep_labelled = keep_labelled
        # None: known not to exist (a GET answered 404, the watch saw it deleted), or
        # presumed absent (see presume_absent).
        self._bodies: dict[Key, dict[str, Any] | None] = {}
        # Every Secret the watches have shown in full and not seen deleted (the operator's
        # own, and those clients use), tracked or not: names only.
        self._seen: set[Key] = set()
        # Secrets with a write of ours on the way: the watch may show it before it returns.
        self._writing: set[Key] = set()

    def __len__(self) -> int:
        return len(self._bodies)

    def noted(self, namespace: str, name: str, body: dict[str, Any] | None) -> None:
        """What the Secret watch saw (None: deleted)."""
        if body is None:
            self._seen.discard((namespace, name))
        else:
            self._seen.add((namespace, name))
        self._keep((namespace, name), body)

    def presume_absent(self, namespace: str, name: str) -> None:
        """Answer "absent" without a read, unless the watch has shown the Secret: for the
        output Secret of a client no operator has reported on. If it exists after all (the
        watch had not listed it yet), the create fails with 409 and drops the entry, so the
        retry reads it."""
        key = (namespace, name)
        if self.tracked(namespace, name) and key not in self._seen:
            self._bodies.setdefault(key, None)

    def forget(self, namespace: str, name: str) -> None:
        self._bodies.pop((namespace, name), None)

    def drop_untracked(self) -> None:
        """Keep only what `tracked` (and keep_labelled) still asks for; the watch goes on."""
        for key in [k for k, body in self._bodies.items() if not self._wanted(k, body)]:
            del self._bodies[key]

    def version(self, namespace: str, name: str) -> str | None:
        """The resourceVersion of the body held; None if none is."""
        body = self._bodies.get((namespace, name))
        return None if body is None else body["metadata"].get("resourceVersion")

    def held(self, labelled: bool) -> list[Key]:
        """The Secrets whose bodies are held, with the operator's label or without."""
        return [k for k, b in self._bodies.items() if b is not None and _labelled(b) == labelled]

    def peek(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The kept body, if any, without a read (not a copy: do not edit it)."""
        return self._bodies.get((namespace, name))

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        key = (namespace, name)
        if key in self._bodies:
            metrics.SECRET_READS.labels("memory").inc()
            body = self._bodies[key]
            return None if body is None else _copied(body)  # callers may edit theirs
        metrics.SECRET_READS.labels("api").inc()
        secret = await self.api.get_secret(namespace, name)
        self._keep(key, secret)
        return secret

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._write(namespace, body, self.api.create_secret(namespace, body))

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._write(namespace, body, self.api.replace_secret(namespace, body))

    async def _write(
        self, namespace: str, body: dict[str, Any], write: Awaitable[dict[str, Any]]
    ) -> dict[str, Any]:
        key = (namespace, body["metadata"]["name"])
        self._writing.add(key)
        try:
            written = await write
        except KubeError:
            # Exists after all (create), stale or gone (replace): the retry reads afresh.
            self._bodies.pop(key, None)
            raise
        finally:
            self._writing.discard(key)
        self._keep(key, written)
        return written

    def writing(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._writing

    def unchanged(self, namespace: str, name: str, body: dict[str, Any]) -> bool:
        """The watch shows the version kept (a relist, the event of our own write) or an
        older one: no news. An older one comes from a watch that restarted after an outage
        and delivers an event from before our last write; taken as news, it would put the
        older body in memory and make the next event of our own write look like drift, and
        the "repair" would write the older token back. resourceVersions are compared as
        numbers where both are (etcd revisions, as kube-apiserver serves them); otherwise
        only the same version counts as no news."""
        kept = self._bodies.get((namespace, name))
        version = (body.get("metadata") or {}).get("resourceVersion")
        if kept is None or version is None:
            return False
        held = (kept.get("metadata") or {}).get("resourceVersion")
        if held == version:
            return True
        return bool(
            isinstance(held, str)
            and held.isdigit()
            and version.isdigit()
            and int(version) < int(held)
        )

    def _wanted(self, key: Key, body: dict[str, Any] | None) -> bool:
        return self.tracked(*key) or (self.keep_labelled and _labelled(body))

    def _keep(self, key: Key, body: dict[str, Any] | None) -> None:
        if not self._wanted(key, body):
            self._bodies.pop(key, None)
        else:
            self._bodies[key] = None if body is None else _trimmed(body)
