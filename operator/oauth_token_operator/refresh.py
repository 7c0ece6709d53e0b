"""The domain: what the operator knows about each OAuthClient and one refresh pass for it.

Data flows one way: kopf events feed observe()/forget()/secret_changed(); these update the
per-object state and ask the Scheduler for a run; a run reads the Secrets, exchanges at the
provider when the token is due (or the credentials or spec changed), writes the output
Secret and patches the status. The run returns the next due time to the Scheduler."""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from . import metrics, schedule, status
from .config import Settings
from .kube import Kube, KubeError, decode_data, rfc3339
from .oauth import Credentials, OAuthError, Outcome, Token, TokenClient
from .secret_bodies import (
    RecordedToken,
    credentials_from,
    fingerprint,
    output_secret,
    owned_by,
    recorded_token,
    with_refresh_token,
)
from .spec import GrantType, OAuthClientSpec, ObjectKey, RefreshPolicy, SpecError, parse

log = logging.getLogger(__name__)

# A write of a rotated refresh token is retried with the token in hand for this long; the
# old refresh token is never sent again (providers revoke the whole grant on reuse).
PERSIST_ATTEMPTS = 6


@dataclass
class ClientState:
    spec: OAuthClientSpec | None
    condition: status.Condition | None
    failures: int = 0
    # The next run must exchange even if the token in place is valid: the credentials or the
    # spec changed after a failure, or the output Secret vanished.
    force: bool = False
    credentials_fingerprint: str | None = None
    # The refresh time drawn for the current token: ((issued, expires, policy), due).
    plan: tuple[tuple[float, float, RefreshPolicy], float] | None = None
    # A rotated refresh token that is not yet safely in the credentials Secret.
    unpersisted_refresh_token: str | None = field(default=None, repr=False)


class Refresher:
    def __init__(
        self,
        kube: Kube,
        tokens: TokenClient,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.kube = kube
        self.tokens = tokens
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.clients: dict[ObjectKey, ClientState] = {}
        self._readers: dict[tuple[str, str], set[ObjectKey]] = defaultdict(set)
        self._owners: dict[tuple[str, str], ObjectKey] = {}
        self.scheduler = schedule.Scheduler(self._run, settings.concurrency, clock)

    # --- events in -------------------------------------------------------------------------

    async def observe(self, body: dict[str, Any]) -> None:
        """An OAuthClient was added or modified (including our own status patches)."""
        meta = body.get("metadata") or {}
        key = ObjectKey(meta.get("namespace", ""), meta.get("name", ""))
        state = self.clients.get(key)
        generation = int(meta.get("generation") or 0)
        uid = str(meta.get("uid", ""))
        if state and state.spec and (state.spec.generation, state.spec.uid) == (generation, uid):
            return  # a status-only change
        if state is None or (state.spec and state.spec.uid != uid):
            previous = status.Condition.from_status(body.get("status"))
            state = ClientState(spec=None, condition=previous)
        try:
            spec = parse(body)
        except SpecError as exc:
            self._unindex(key)
            state.spec = None
            self.clients[key] = state
            self.scheduler.forget(key)
            await self._report(key, uid, generation, state, False, status.INVALID_SPEC, str(exc))
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
        self.scheduler.schedule_now(key)

    def forget(self, key: ObjectKey) -> None:
        """The OAuthClient is gone; its output Secret goes with it by garbage collection."""
        self._unindex(key)
        self.clients.pop(key, None)
        metrics.CLIENTS.set(len(self.clients))
        self.scheduler.forget(key)

    def secret_changed(self, namespace: str, name: str, secret: dict[str, Any] | None) -> None:
        """A Secret changed (None: deleted). Credentials changes and a deleted output Secret
        trigger a run within seconds; anything else is ignored cheaply."""
        for key in self._readers.get((namespace, name), ()):
            state = self.clients[key]
            if state.spec is None or state.credentials_fingerprint is None:
                continue  # never run yet: its first run reads the Secret anyway
            if secret is not None and name == state.spec.credentials.secret_name:
                try:
                    current = fingerprint(credentials_from(state.spec, secret))
                except OAuthError:
                    current = None
                if current == state.credentials_fingerprint:
                    continue  # unchanged, or our own rotated refresh token
            log.info("secret %s/%s changed; refreshing %s", namespace, name, key)
            state.force = True
            self.scheduler.schedule_now(key)
        owner = self._owners.get((namespace, name))
        if owner is not None and secret is None and owner in self.clients:
            log.info("output secret %s/%s was deleted; refreshing %s", namespace, name, owner)
            self.clients[owner].force = True
            self.scheduler.schedule_now(owner)

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
        self._owners.pop((key.namespace, state.spec.output.name), None)

    # --- one run ---------------------------------------------------------------------------

    async def _run(self, key: Hashable) -> float | None:
        assert isinstance(key, ObjectKey)
        state = self.clients.get(key)
        if state is None or state.spec is None:
            return None
        spec = state.spec
        recorded: RecordedToken | None = None
        try:
            # The output Secret first: a failure reading the inputs must still know whether
            # a valid token is in place (Ready stays True while it is).
            output = await self.kube.get_secret(key.namespace, spec.output.name)
            if output is not None and not owned_by(output, spec.uid):
                raise OAuthError(
                    Outcome.NEEDS_HUMAN,
                    status.SECRET_NOT_OWNED,
                    f"Secret {spec.output.name} exists and is not owned by this OAuthClient; "
                    "the operator will not overwrite it (delete it or choose spec.secret.name)",
                )
            if output is not None:
                recorded = recorded_token(output, spec.output.access_token_key)
            credentials_secret, creds, ca_pem = await self._read_inputs(spec, state)
            due = self._due_without_exchange(spec, state, recorded)
            if due is not None:
                assert recorded is not None
                metrics.REUSED_TOKENS.inc()
                log.info(
                    "%s: token in Secret %s is valid until %s; next refresh at %s "
                    "(no exchange needed)",
                    key,
                    spec.output.name,
                    rfc3339(recorded.expires_at),
                    rfc3339(due),
                )
                await self._succeeded(spec, state, recorded.issued_at, recorded.expires_at, due)
                return due
            token = await self.tokens.exchange(
                spec.request, creds, spec.refresh.default_lifetime, ca_pem
            )
            metrics.EXCHANGES.labels("success").inc()
            await self._keep_refresh_token(spec, state, credentials_secret, creds, token)
            await self._write_output(spec, token, output)
        except OAuthError as exc:
            return await self._failed(
                spec, state, recorded, exc.outcome, exc.reason, exc.message, exc.retry_after
            )
        except KubeError as exc:
            return await self._failed(
                spec, state, recorded, Outcome.TRANSIENT, status.KUBERNETES_ERROR, str(exc), None
            )
        if state.unpersisted_refresh_token:
            return await self._failed(
                spec,
                state,
                recorded,
                Outcome.TRANSIENT,
                "RefreshTokenNotPersisted",
                "the rotated refresh token could not be written to Secret "
                f"{spec.credentials.secret_name} yet; it is kept in memory and retried",
                None,
            )
        due = self._plan(spec, state, token.issued_at, token.expires_at)

        state.force = False
        log.info(
            "%s: wrote a token valid until %s to Secret %s; next refresh at %s",
            key,
            rfc3339(token.expires_at),
            spec.output.name,
            rfc3339(due),
        )
        await self._succeeded(spec, state, token.issued_at, token.expires_at, due, token)
        return due

    async def _read_inputs(
        self, spec: OAuthClientSpec, state: ClientState
    ) -> tuple[dict[str, Any], Credentials, str | None]:
        ns = spec.key.namespace
        secret = await self.kube.get_secret(ns, spec.credentials.secret_name)
        if secret is None:
            state.credentials_fingerprint = "absent"  # so that its creation triggers a run
            raise OAuthError(
                Outcome.NEEDS_HUMAN,
                status.CREDENTIALS_NOT_FOUND,
                f"credentials Secret {spec.credentials.secret_name} not found in {ns}",
            )
        if state.unpersisted_refresh_token:
            secret = await self._persist_refresh_token(spec, state, secret)
        creds = credentials_from(spec, secret)
        state.credentials_fingerprint = fingerprint(creds)
        ca_pem = None
        if spec.ca_bundle:
            name, ca_key = spec.ca_bundle
            ca_secret = await self.kube.get_secret(ns, name)
            ca_pem = decode_data(ca_secret).get(ca_key)
            if not ca_pem:
                raise OAuthError(
                    Outcome.NEEDS_HUMAN,
                    "InvalidCABundle",
                    f"CA bundle Secret {name} not found or has no key {ca_key!r}",
                )
        return secret, creds, ca_pem

    def _due_without_exchange(
        self, spec: OAuthClientSpec, state: ClientState, recorded: RecordedToken | None
    ) -> float | None:
        """The next due time when the token in place can stay (this is what makes a restart
        cost no provider calls); None when an exchange is needed now."""
        if state.force or recorded is None or recorded.spec_hash != spec.spec_hash:
            return None
        due = self._plan(spec, state, recorded.issued_at, recorded.expires_at)
        return due if due > self.clock() else None

    def _plan(
        self, spec: OAuthClientSpec, state: ClientState, issued_at: float, expires_at: float
    ) -> float:
        """The refresh time for a token, drawn once per token: a run that fires at its
        jittered time must not draw again and find itself not yet due."""
        key = (issued_at, expires_at, spec.refresh)
        if state.plan is None or state.plan[0] != key:
            due = schedule.refresh_at(
                issued_at, expires_at, spec.refresh, self.settings.propagation_margin, self.rng
            )
            state.plan = (key, due)
        return state.plan[1]

    async def _keep_refresh_token(
        self,
        spec: OAuthClientSpec,
        state: ClientState,
        secret: dict[str, Any],
        creds: Credentials,
        token: Token,
    ) -> None:
        """Persists a rotated refresh token before anything else can use the old one.
        `secret` is the credentials Secret as read for this run; if it changed since, the
        replace conflicts and persist_refresh_token re-reads it."""
        if spec.request.grant_type is not GrantType.REFRESH_TOKEN:
            return
        if not token.refresh_token or token.refresh_token == creds.refresh_token:
            return
        state.unpersisted_refresh_token = token.refresh_token
        state.credentials_fingerprint = fingerprint(
            Credentials(
                creds.client_id, creds.client_secret, token.refresh_token, creds.private_key
            )
        )
        try:
            await self._persist_refresh_token(spec, state, secret)
        except KubeError as exc:
            log.warning("could not persist rotated refresh token for %s: %s", spec.key, exc)

    async def _persist_refresh_token(
        self, spec: OAuthClientSpec, state: ClientState, secret: dict[str, Any]
    ) -> dict[str, Any]:
        assert state.unpersisted_refresh_token is not None
        secret = await persist_refresh_token(
            self.kube, spec, secret, state.unpersisted_refresh_token
        )
        state.unpersisted_refresh_token = None
        return secret

    async def _write_output(
        self, spec: OAuthClientSpec, token: Token, existing: dict[str, Any] | None
    ) -> None:
        ns = spec.key.namespace
        async for attempt in tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=2.0),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, KubeError) and e.conflict),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    existing = await self.kube.get_secret(ns, spec.output.name)
                    if existing is not None and not owned_by(existing, spec.uid):
                        raise OAuthError(
                            Outcome.NEEDS_HUMAN,
                            status.SECRET_NOT_OWNED,
                            f"Secret {spec.output.name} was taken over",
                        )
                body = output_secret(spec, token, existing)
                if existing is None:
                    await self.kube.create_secret(ns, body)
                else:
                    await self.kube.replace_secret(ns, body)

    # --- outcomes --------------------------------------------------------------------------

    async def _succeeded(
        self,
        spec: OAuthClientSpec,
        state: ClientState,
        issued_at: float,
        expires_at: float,
        due: float,
        token: Token | None = None,
    ) -> None:
        state.failures = 0
        fields: dict[str, Any] = {
            "secretName": spec.output.name,
            "expiresAt": rfc3339(expires_at),
            "lastRefreshTime": rfc3339(issued_at),
            "nextRefreshTime": rfc3339(due),
            "consecutiveFailures": 0,
        }
        if token is not None:
            fields["tokenType"] = token.token_type
            fields["scope"] = token.scope
        elif state.condition is not None and (
            state.condition.reason,
            state.condition.observed_generation,
        ) == (status.TOKEN_ISSUED, spec.generation):
            return  # resumed with a valid token and an up-to-date status: no write at all
        message = f"token valid until {rfc3339(expires_at)}, next refresh at {rfc3339(due)}"
        await self._report(
            spec.key, spec.uid, spec.generation, state, True, status.TOKEN_ISSUED, message, fields
        )

    async def _failed(
        self,
        spec: OAuthClientSpec,
        state: ClientState,
        recorded: RecordedToken | None,
        outcome: Outcome,
        reason: str,
        message: str,
        retry_after: float | None,
    ) -> float:
        now = self.clock()
        metrics.EXCHANGES.labels(outcome.value).inc()
        state.failures += 1
        needs_human = outcome is Outcome.NEEDS_HUMAN
        delay = schedule.retry_delay(state.failures, retry_after, needs_human, self.rng)
        due = now + delay
        ready = recorded is not None and recorded.expires_at > now and not needs_human
        if ready and recorded is not None:
            valid_until = rfc3339(recorded.expires_at)
            message = f"token valid until {valid_until}; refresh failed: {reason}: {message}"
            reason = status.REFRESH_RETRYING
        log.warning(
            "refresh of %s failed (%s): %s; retrying in %.0fs", spec.key, reason, message, delay
        )
        fields = {
            "consecutiveFailures": state.failures,
            "nextRefreshTime": rfc3339(due),
            "secretName": spec.output.name,
        }
        await self._report(
            spec.key, spec.uid, spec.generation, state, ready, reason, message, fields
        )
        return due

    async def _report(
        self,
        key: ObjectKey,
        uid: str,
        generation: int,
        state: ClientState,
        ready: bool,
        reason: str,
        message: str,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Patches status and records an Event when the condition changes. A failure to
        patch is logged: the next run writes status again."""
        condition = status.next_condition(
            state.condition, ready, reason, message, generation, self.clock()
        )
        if status.is_news(state.condition, condition):
            await self.kube.post_event(key, uid, "Normal" if ready else "Warning", reason, message)
        patch = {
            **(fields or {}),
            "observedGeneration": generation,
            "conditions": [condition.to_dict()],
        }
        try:
            await self.kube.patch_status(key, patch)
        except KubeError as exc:
            if not exc.not_found:
                log.warning("could not patch status of %s: %s", key, exc)
            return
        state.condition = condition


async def persist_refresh_token(
    kube: Kube, spec: OAuthClientSpec, secret: dict[str, Any], refresh_token: str
) -> dict[str, Any]:
    """Writes the refresh token in hand into the credentials Secret, retrying conflicts and
    API errors with a fresh read; never exchanges again to get another one."""
    ns, name = spec.key.namespace, spec.credentials.secret_name
    async for attempt in tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(PERSIST_ATTEMPTS),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0),
        retry=tenacity.retry_if_exception_type(KubeError),
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                secret = await kube.get_secret(ns, name) or secret
            secret = await kube.replace_secret(
                ns, with_refresh_token(secret, spec.credentials.refresh_token, refresh_token)
            )
    return secret
