"""The operator's report on every ClusterOAuthProvider and OAuthProvider, and what a change
of one does to its OAuthClients.

Each provider is checked when it is first seen, when its spec or its CA bundle Secret
changes, and then every few minutes (sooner, with a capped backoff, while it fails): parsed
as clients parse it, its CA bundle read as clients read it, its discovery document fetched
through the token client that clients use (so the same trust store, endpoint policy and
issuer check, and a renewed cache for them). The outcome is its status (resource/provider_status.py,
pure): Ready with the reason its clients would get, status.tokenEndpoint, observedGeneration.
The check sends no credential.

A change wakes the provider's clients (refresh.Refresher.wake_provider_clients) so that they
run now, not at their next refresh or backoff: a spec change or a deletion all of them (a
run whose resolved spec is unchanged exchanges nothing), a new provider the clients that
could not find it, a CA bundle Secret change or a recovery those failing because of it. The
discovery cache entry of a provider that changed is dropped.

Checks run on a Scheduler of their own, a few at a time: providers are few, and a slow one
must not hold a client's run."""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.engine import schedule
from oauth_token_operator.engine.config import Settings
from oauth_token_operator.exchange.exchanger import read_ca_bundle
from oauth_token_operator.exchange.providers import (
    PLURALS,
    Provider,
    ProviderSpecError,
    parse_provider,
)
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import DiscoveryAPI, ProviderStatusAPI, SecretAPI
from oauth_token_operator.oauth.types import PROVIDER_KIND, OAuthError
from oauth_token_operator.resource import provider_status, status
from oauth_token_operator.resource.provider_status import Found
from oauth_token_operator.resource.spec import API_GROUP, API_VERSION

log = logging.getLogger(__name__)

CONCURRENCY = 4
Key = tuple[str, str, str]  # (kind, namespace or "", name)
# (kind, namespace or None, name, reasons): wake its clients failing with one of these
# reasons (None: all its clients); returns how many were woken.
Wake = Callable[[str, str | None, str, frozenset[str] | None], int]


@dataclass
class _Watched:
    kind: str
    namespace: str | None
    name: str
    body: dict[str, Any]
    uid: str
    generation: int
    condition: status.Condition | None  # as the object's status has it
    reported: dict[str, Any] | None  # the status last written (or found)
    failures: int = 0
    ca_secret: tuple[str, str] | None = None  # the CA bundle Secret followed

    @property
    def ref(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.kind} {self.name}{where}"


def _key(kind: str, namespace: str | None, name: str) -> Key:
    return (kind, namespace or "", name)


class ProviderMonitor:
    def __init__(
        self,
        kube: ProviderStatusAPI,
        secrets: SecretAPI,
        discovery: DiscoveryAPI,
        settings: Settings,
        wake: Wake,
        release_secret: Callable[[str, str], None] = lambda namespace, name: None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        """`secrets` reads CA bundle Secrets (the clients' cache: a Secret this follows is
        kept there and its watch events come to secret_changed); `release_secret` tells
        the cache that one is followed no more."""
        self.kube = kube
        self.secrets = secrets
        self.discovery = discovery
        self.settings = settings
        self.wake = wake
        self.release_secret = release_secret
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.providers: dict[Key, _Watched] = {}
        self._followed: dict[tuple[str, str], set[Key]] = defaultdict(set)
        self.scheduler = schedule.Scheduler(self._check, CONCURRENCY, clock)

    def observe(self, kind: str, body: dict[str, Any]) -> None:
        """A provider was listed, added or modified (our own status patches included)."""
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace") or "") if kind == PROVIDER_KIND else None
        name = str(meta.get("name") or "")
        key = _key(kind, namespace, name)
        uid, generation = str(meta.get("uid") or ""), int(meta.get("generation") or 0)
        known = self.providers.get(key)
        if known is not None and (known.uid, known.generation) == (uid, generation):
            return  # status or metadata only
        if known is None or known.uid != uid:  # new, or made again (its deletion unseen)
            observed = body.get("status")
            condition = status.Condition.from_status(observed)
            reported = provider_status.recorded(observed)
        else:
            condition, reported = known.condition, known.reported
        watched = _Watched(kind, namespace, name, body, uid, generation, condition, reported)
        watched.ca_secret = self._to_follow(watched)
        if known is not None and known.ca_secret != watched.ca_secret:
            self._unfollow(known)
        if watched.ca_secret is not None:
            self._followed[watched.ca_secret].add(key)
        self.providers[key] = watched
        self.discovery.forget_provider(kind, namespace, name)
        self.scheduler.schedule_now(key)
        first = known is None
        woken = self.wake(kind, namespace, name, provider_status.FIRST_SEEN if first else None)
        if woken:
            what = "is new" if first else "changed"
            log.info("%s %s: running %d of its OAuthClients now", watched.ref, what, woken)

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        """The provider was deleted: its clients run now (and say ProviderNotFound)."""
        namespace = namespace if kind == PROVIDER_KIND else None
        key = _key(kind, namespace, name)
        self._unfollow(self.providers.pop(key, None))
        self.scheduler.forget(key)
        self.discovery.forget_provider(kind, namespace, name)
        if woken := self.wake(kind, namespace, name, None):
            log.info("%s %s was deleted: running its %d OAuthClients now", kind, name, woken)

    def stand_by(self) -> None:
        """A peer acts now: no checks, nothing held (kopf lists the providers again when
        this replica acts again)."""
        self.scheduler.forget_all()
        for key in list(self.providers):
            self._unfollow(self.providers.pop(key))

    def follows(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._followed

    def secret_changed(self, namespace: str, name: str) -> None:
        """A CA bundle Secret this follows changed: check its providers now, and run their
        clients that failed because of them."""
        for key in self._followed.get((namespace, name), ()):
            watched = self.providers[key]
            self.scheduler.schedule_now(key)
            self.discovery.forget_provider(watched.kind, watched.namespace, watched.name)
            woken = self.wake(
                watched.kind, watched.namespace, watched.name, provider_status.PROVIDER_FAILURES
            )
            log.info(
                "CA bundle Secret %s/%s of %s changed; checking it%s",
                namespace,
                name,
                watched.ref,
                f", and running {woken} of its failing OAuthClients" if woken else "",
            )

    def _to_follow(self, watched: _Watched) -> tuple[str, str] | None:
        """The CA bundle Secret to follow: one the Secret watches see (in the watched
        namespaces); elsewhere the periodic check reads it again."""
        try:
            ca = parse_provider(watched.body, watched.kind, self.settings.operator_namespace).ca
        except ProviderSpecError:
            return None
        if ca is None or ca.secret is None:
            return None
        namespace, name, _ = ca.secret
        if self.settings.namespaces and namespace not in self.settings.namespaces:
            return None
        return (namespace, name)

    def _unfollow(self, watched: _Watched | None) -> None:
        if watched is None or watched.ca_secret is None:
            return
        followers = self._followed.get(watched.ca_secret)
        if followers is not None:
            followers.discard(_key(watched.kind, watched.namespace, watched.name))
            if not followers:
                del self._followed[watched.ca_secret]
                self.release_secret(*watched.ca_secret)

    async def _check(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        watched = self.providers.get(key)
        if watched is None:
            return None
        found = await self._probe(watched)
        if self.providers.get(key) is not watched:
            return None  # changed or gone meanwhile: a check of what is there now follows
        now = self.clock()
        condition, patch = provider_status.status_patch(
            watched.condition, found, watched.generation, now
        )
        previous, watched.condition = watched.condition, condition
        watched.failures = 0 if found.token_endpoint else watched.failures + 1
        if patch != watched.reported:
            if await self._patch(watched, patch) is None:
                return None  # deleted: its DELETED event follows
            self._log(watched, previous, condition)
        if provider_status.recovered(previous, condition):
            woken = self.wake(
                watched.kind, watched.namespace, watched.name, provider_status.PROVIDER_FAILURES
            )
            if woken:
                log.info("%s works again: running %d failing OAuthClients", watched.ref, woken)
        return now + provider_status.next_check(watched.failures, self.rng)

    async def _probe(self, watched: _Watched) -> Found:
        try:
            provider = parse_provider(watched.body, watched.kind, self.settings.operator_namespace)
        except ProviderSpecError as exc:
            return Found(reason=reasons.PROVIDER_INVALID, message=str(exc))
        try:
            ca_pem = await self._ca_pem(provider)
            url = await self.discovery.check_provider(provider.endpoint, ca_pem)
        except OAuthError as exc:
            return Found(reason=exc.reason, message=exc.message)
        except KubeError as exc:
            return Found(
                reason=reasons.KUBERNETES_ERROR,
                message=f"the CA bundle Secret could not be read: {exc}",
            )
        return Found(url, provider.endpoint.issuer)

    async def _ca_pem(self, provider: Provider) -> str | None:
        if provider.ca is None:
            return None
        if provider.ca.secret is None:
            return provider.ca.pem
        namespace = provider.ca.secret[0]
        return await read_ca_bundle(self.secrets, provider.ca.secret, f" (namespace {namespace})")

    async def _patch(self, watched: _Watched, patch: dict[str, Any]) -> bool | None:
        """Writes the status; None if the provider is gone, False if the write failed (the
        next check writes it again)."""
        resource = (API_GROUP, API_VERSION, PLURALS[watched.kind])
        try:
            await self.kube.patch_object_status(resource, watched.namespace, watched.name, patch)
        except KubeError as exc:
            if exc.not_found and not exc.kind_missing:
                return None
            log.warning("could not write the status of %s: %s", watched.ref, exc)
            return False
        watched.reported = patch
        return True

    @staticmethod
    def _log(
        watched: _Watched, previous: status.Condition | None, condition: status.Condition
    ) -> None:
        if previous is not None and (previous.status, previous.reason, previous.message) == (
            condition.status,
            condition.reason,
            condition.message,
        ):
            return
        if condition.status == "True":
            log.info("%s is ready: %s", watched.ref, condition.message)
        else:
            log.warning(
                "%s is not ready (%s): %s", watched.ref, condition.reason, condition.message
            )
