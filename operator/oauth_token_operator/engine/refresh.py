"""What triggers a run: the operator's memory of every OAuthClient, fed by kopf events.

observe()/forget()/secret_changed() update the per-object state and ask the Scheduler for a
run; the run itself is run.Runner's (gather → decide → apply → report), and it returns the
next due time to the Scheduler."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from oauth_token_operator import metrics, reasons
from oauth_token_operator.engine import schedule
from oauth_token_operator.engine.config import Settings
from oauth_token_operator.engine.rollout import Restarter
from oauth_token_operator.engine.run import ClientState, Runner
from oauth_token_operator.exchange import custody
from oauth_token_operator.exchange.custody import Holder
from oauth_token_operator.exchange.exchanger import Exchanger
from oauth_token_operator.exchange.keyless import ServiceAccountAssertions
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import KubeAPI, TokenAPI
from oauth_token_operator.kube.secret_cache import CachedSecrets
from oauth_token_operator.oauth.types import OAuthError
from oauth_token_operator.resource import status
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.secret_bodies import (
    credentials_from,
    fingerprint,
    owned_by,
    refresh_fingerprint,
    repaired,
)
from oauth_token_operator.resource.spec import ObjectKey, SpecError
from oauth_token_operator.wire import parse_rfc3339

log = logging.getLogger(__name__)


class SecretFollower(Protocol):
    """Another part that follows some Secrets (provider_watch: providers' CA bundles): they
    are kept in memory as the clients' are, and their changes are told to it."""

    def follows(self, namespace: str, name: str) -> bool: ...

    def secret_changed(self, namespace: str, name: str) -> None: ...


class Refresher:
    def __init__(
        self,
        kube: KubeAPI,
        tokens: TokenAPI,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        holder: Holder | None = None,
    ) -> None:
        self.kube = kube
        self.tokens = tokens
        self.settings = settings
        self.clock = clock
        rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.clients: dict[ObjectKey, ClientState] = {}
        self._readers: dict[tuple[str, str], set[ObjectKey]] = defaultdict(set)
        self._owners: dict[tuple[str, str], ObjectKey] = {}
        # Runs read Secrets from memory; the watch (secret_changed) keeps it current.
        # Unsharded, every Secret the operator labels is one of its clients': kept from the
        # watch before kopf brings the client, a restart reads none of them again.
        self.secrets = CachedSecrets(kube, self._tracked, keep_labelled=not settings.selector)
        holder = holder or Holder(settings.identity)
        assertions = ServiceAccountAssertions(kube, settings.guard.tenancy)
        self.exchanger = Exchanger(self.secrets, tokens, holder, clock, assertions)
        self.rollouts = Restarter(kube, kube, tenancy=settings.guard.tenancy)
        self.runner = Runner(
            self.secrets, kube, kube, self.exchanger, settings, clock, rng, self.rollouts, kube
        )
        self.scheduler = schedule.Scheduler(
            self._run, settings.concurrency, clock, metrics.RUN_START_DELAY_SECONDS.observe
        )
        self.follower: SecretFollower | None = None

    async def observe(self, body: dict[str, Any]) -> None:
        """An OAuthClient was added or modified (including our own status patches)."""
        meta = body.get("metadata") or {}
        key = ObjectKey(meta.get("namespace", ""), meta.get("name", ""))
        state = self.clients.get(key)
        generation = int(meta.get("generation") or 0)
        uid = str(meta.get("uid", ""))
        if state and state.spec and (state.spec.generation, state.spec.uid) == (generation, uid):
            return  # a status-only change
        never_reported = False
        if state is None or (state.spec and state.spec.uid != uid):
            previous = body.get("status") or {}
            never_reported = not previous
            resumed = status.Resumed.from_status(previous)
            state = ClientState(
                spec=None,
                condition=status.Condition.from_status(previous),
                # The backoff goes on from the recorded count, not from 0.
                failures=resumed.failures if resumed else 0,
                grant_invalid_since=parse_rfc3339(previous.get("grantInvalidSince")),
                resumed=resumed,
            )
            if state.failures and state.condition is not None:
                state.failure_reason = state.condition.reason
        try:
            spec = parse(body)
        except SpecError as exc:
            self._unindex(key)
            state.spec = None
            self.clients[key] = state
            self.scheduler.forget(key)
            state.condition = await self.runner.reporter.report(
                key, uid, generation, state.condition, False, reasons.INVALID_SPEC, str(exc)
            )
            return
        if state.spec is not None and state.failures:
            state.force = True  # a spec change after a failure deserves a prompt retry
        self._unindex(key)
        state.spec = spec
        self.clients[key] = state
        metrics.CLIENTS.set(len(self.clients))
        for name in spec.secret_names_read():
            self._readers[(key.namespace, name)].add(key)
        self._owners[(key.namespace, spec.output.name)] = key
        if never_reported:
            # No operator has run it: its output Secret is not there to read (if it is after
            # all, the create fails with 409 and the retry reads it). Saves a GET per new client.
            self.secrets.presume_absent(key.namespace, spec.output.name)
        self.scheduler.schedule_now(key)

    def forget(self, key: ObjectKey) -> None:
        """The OAuthClient is gone; its output Secret goes with it by garbage collection."""
        self._unindex(key)
        self.clients.pop(key, None)
        metrics.CLIENTS.set(len(self.clients))
        self.scheduler.forget(key)

    def stand_by(self) -> None:
        """A peer acts now: start nothing more and hold no clients (runs in progress finish;
        a paused kopf stream would not tell us of deletions anyway)."""
        self.scheduler.pause()
        self.scheduler.forget_all()
        self.clients.clear()
        self._readers.clear()
        self._owners.clear()
        self.secrets.drop_untracked()  # the Secret watch goes on: what stays is current
        metrics.CLIENTS.set(0)

    async def take_over(self, bodies: list[dict[str, Any]]) -> None:
        """This replica acts again: every OAuthClient there is now, as on a fresh start."""
        for body in bodies:
            await self.observe(body)
        self.scheduler.resume()

    def secret_changed(self, namespace: str, name: str, secret: dict[str, Any] | None) -> None:
        """A Secret changed (None: deleted). New client credentials, or any change while a
        client is failing (a new login after invalid_grant), and a deleted output Secret
        trigger a run within seconds; a rotated refresh token alone (ours, a sibling's, the
        CLI's) waits for the next due run; anything else is ignored cheaply."""
        if secret is not None and self.secrets.unchanged(namespace, name, secret):
            return  # a relist after a 410 or an outage shows what is known: no news
        owner = self._owners.get((namespace, name))
        if owner is not None and secret is not None:
            self._note_drift(owner, namespace, name, secret)
        self.secrets.noted(namespace, name, secret)
        if self.follower is not None and self.follower.follows(namespace, name):
            self.follower.secret_changed(namespace, name)
        for key in self._readers.get((namespace, name), ()):
            state = self.clients[key]
            if state.spec is None or state.credentials_fingerprint is None:
                continue  # never run yet: its first run reads the Secret anyway
            if secret is not None and name == state.spec.credentials.secret_name:
                certificate = state.spec.client_certificate
                tls = self.secrets.peek(namespace, certificate) if certificate else None
                try:
                    creds = credentials_from(state.spec, secret, tls)
                except OAuthError:
                    creds = None
                if creds is not None and fingerprint(creds) == state.credentials_fingerprint:
                    if state.waiting_for_claim:
                        # The claim may be released: run, and exchange only if still due.
                        self.scheduler.schedule_now(key)
                        continue
                    # Same client identity. A new refresh token matters only to a failing
                    # client (a new login), and only if it is not one this process wrote.
                    rotated = refresh_fingerprint(creds)
                    if (
                        not state.failures
                        or rotated == state.refresh_fingerprint
                        or self.exchanger.wrote(namespace, name, rotated)
                    ):
                        continue
            log.info("secret %s/%s changed; refreshing %s", namespace, name, key)
            state.force = True
            self.scheduler.schedule_now(key)
        if owner is not None and secret is None and owner in self.clients:
            log.info("output secret %s/%s was deleted; refreshing %s", namespace, name, owner)
            self.clients[owner].force = True
            self.scheduler.schedule_now(owner)

    def wake_provider_clients(
        self, kind: str, namespace: str | None, name: str, failing: frozenset[str] | None
    ) -> int:
        """The OAuthClients whose spec.providerRef names this provider (namespace: an
        OAuthProvider's) run now: all of them (failing None), or those failing with one of
        these reasons. A failing one exchanges even with a valid token in place, as after a
        spec change; the others exchange only if the provider changed what they send (their
        spec hash). Returns how many. A scan of every client: provider events are rare."""
        woken = 0
        for key, state in self.clients.items():
            spec = state.spec
            if spec is None or spec.request.endpoint.provider != name:
                continue
            if spec.request.endpoint.provider_kind != kind:
                continue
            if namespace is not None and key.namespace != namespace:
                continue
            if failing is not None and not (state.failures and state.failure_reason in failing):
                continue
            if state.failures:
                state.force = True
            self.scheduler.schedule_now(key)
            woken += 1
        return woken

    def release_secret(self, namespace: str, name: str) -> None:
        """The follower follows this Secret no more: dropped from memory unless a client
        uses it."""
        self._drop_untracked(namespace, name)

    def _note_drift(
        self, owner: ObjectKey, namespace: str, name: str, seen: dict[str, Any]
    ) -> None:
        """An output Secret changed: if what the operator wrote (kept in memory) drifted,
        the owner's next run, now, puts it back."""
        state = self.clients.get(owner)
        written = self.secrets.peek(namespace, name)
        if state is None or state.spec is None or written is None:
            return
        if self.secrets.writing(namespace, name):
            return  # most likely our own write, shown before it returned: not drift
        if not (owned_by(written, state.spec.uid) and owned_by(seen, state.spec.uid)):
            return  # not ours to repair (a takeover is SecretNotOwned on the next run)
        repair = repaired(written, seen)
        if repair is not None:
            state.repair = repair
            self.scheduler.schedule_now(owner)

    async def persist_held(self, seconds: float) -> int:
        """On stop, after the drain: rotated refresh tokens still only in memory (the API
        server was away when they came) are written, retried for `seconds`. Returns how
        many could not be: those are lost with the process."""
        held = [s for s in self.clients.values() if s.spec and s.unpersisted_refresh_token]
        deadline = time.monotonic() + seconds
        for state in held:
            spec, token = state.spec, state.unpersisted_refresh_token
            assert spec is not None and token is not None
            while True:
                try:
                    secret = await self.secrets.get_secret(
                        spec.key.namespace, spec.credentials.secret_name
                    )
                    if secret is not None:
                        await custody.persist(self.secrets, spec, secret, token)
                        state.unpersisted_refresh_token = None
                    break
                except KubeError as exc:
                    if time.monotonic() + 1.0 > deadline:
                        log.error(
                            "%s: the rotated refresh token could not be written before the "
                            "stop (%s); the grant may need a new login",
                            spec.key,
                            exc,
                        )
                        break
                    await asyncio.sleep(1.0)
        return sum(1 for s in held if s.unpersisted_refresh_token)

    def client_samples(self) -> list[metrics.ClientSample]:
        """Each client as the metrics show it. Called from the scrape thread: reads only,
        from a copy (a dict copy does not let the event loop's thread in halfway)."""
        samples = []
        for key, state in list(self.clients.items()):
            token = state.plan[0] if state.plan else None
            condition = state.condition
            samples.append(
                metrics.ClientSample(
                    key.namespace,
                    key.name,
                    None if condition is None else condition.status == "True",
                    condition.reason if condition else "",
                    state.failures,
                    state.grant_invalid_since is not None,
                    token[0] if token else None,
                    token[1] if token else None,
                    self.scheduler.due_time(key),
                )
            )
        return samples

    def _tracked(self, namespace: str, name: str) -> bool:
        """A Secret some client reads or writes, or the follower follows: the ones kept in
        memory."""
        if (namespace, name) in self._readers or (namespace, name) in self._owners:
            return True
        return self.follower is not None and self.follower.follows(namespace, name)

    def _unindex(self, key: ObjectKey) -> None:
        state = self.clients.get(key)
        if state is None or state.spec is None:
            return
        for name in state.spec.secret_names_read():
            readers = self._readers.get((key.namespace, name))
            if readers is not None:
                readers.discard(key)
                if not readers:
                    del self._readers[(key.namespace, name)]
                    self._drop_untracked(key.namespace, name)
        output = (key.namespace, state.spec.output.name)
        if self._owners.get(output) == key:
            del self._owners[output]
            self._drop_untracked(*output)

    def _drop_untracked(self, namespace: str, name: str) -> None:
        if not self._tracked(namespace, name):
            self.secrets.forget(namespace, name)

    async def _run(self, key: Hashable) -> float | None:
        assert isinstance(key, ObjectKey)
        state = self.clients.get(key)
        if state is None or state.spec is None:
            return None
        was_api_failing = state.api_failing
        with metrics.RUN_SECONDS.time():
            due = await self.runner.run(state.spec, state)
        if was_api_failing and not state.api_failing:
            # The API server is back: the clients that failed for it go now, not at their
            # backoff, which grew while it was away (tokens would expire meanwhile).
            for other, other_state in self.clients.items():
                if other_state.api_failing and other != key:
                    self.scheduler.schedule_now(other)
        return due
