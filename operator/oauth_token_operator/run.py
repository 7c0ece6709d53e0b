"""What one run does for one OAuthClient: gather what is in the cluster, decide (decide.py,
pure), apply the decision (exchange.py, the output Secret), and report (report.py).

The split follows cert-manager's certificate controllers: refresh.py decides *when* a run
happens, this module *what* it does, report.py and status.py *what it says*."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from . import decide, metrics, reasons, schedule, status
from .config import Settings
from .custody import ClaimHeld
from .exchange import Exchanger, Inputs, read_inputs
from .kube import KubeError
from .oauth import OAuthError, Outcome, Token
from .ports import ConfigMapAPI, ProviderAPI, SecretAPI, StatusAPI
from .providers import resolve
from .report import Reporter
from .rollout import Restarter
from .secret_bodies import (
    RecordedToken,
    access_token_in,
    fingerprint,
    output_secret,
    owned_by,
    recorded_token,
    refresh_fingerprint,
)
from .spec import OAuthClientSpec, RefreshPolicy
from .wire import rfc3339

log = logging.getLogger(__name__)


@dataclass
class ClientState:
    """What the operator remembers about one OAuthClient between runs."""

    spec: OAuthClientSpec | None
    condition: status.Condition | None
    failures: int = 0
    # The next run must exchange even if the token in place is valid: the credentials or the
    # spec changed after a failure, or the output Secret vanished.
    force: bool = False
    # Identifies the client ID/secret/key last used ("absent": the Secret did not exist),
    # and the refresh token last read or written.
    credentials_fingerprint: str | None = None
    refresh_fingerprint: str | None = None
    # The refresh time drawn for the current token: ((issued, expires, policy), due).
    plan: tuple[tuple[int, int, RefreshPolicy], float] | None = None
    # A rotated refresh token that is not yet safely in the credentials Secret.
    unpersisted_refresh_token: str | None = field(default=None, repr=False)
    # Since when the provider has answered invalid_grant (the grant is dead).
    grant_invalid_since: float | None = None
    # Another process holds the refresh claim; its release (a Secret event) wakes us.
    waiting_for_claim: bool = False
    # When this process last started an exchange for the client (the hard floor).
    last_exchange: float | None = None


class Runner:
    def __init__(
        self,
        secrets: SecretAPI,
        config_maps: ConfigMapAPI,
        status_api: StatusAPI,
        exchanger: Exchanger,
        settings: Settings,
        clock: Callable[[], float],
        rng: random.Random,
        rollouts: Restarter,
        providers: ProviderAPI | None = None,
    ) -> None:
        self.kube = secrets
        self.providers = providers
        self.rollouts = rollouts
        self.config_maps = config_maps
        self.exchanger = exchanger
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.reporter = Reporter(status_api, clock)

    async def run(self, spec: OAuthClientSpec, state: ClientState) -> float:
        """One pass; returns when to run next."""
        try:
            spec = await resolve(self.providers, spec)
        except (OAuthError, KubeError) as exc:
            return await self._unresolved(spec, state, exc)
        try:
            output, gathered, inputs = await self._gather(spec, state)
        except KubeError as exc:
            error = OAuthError(Outcome.TRANSIENT, reasons.KUBERNETES_ERROR, str(exc))
            return await self._failed(spec, state, None, error, output_exists=None)
        recorded = gathered.recorded
        planned = self._plan(spec, state, recorded) if recorded is not None else None
        decision = decide.decide(
            spec, gathered, force=state.force, planned_due=planned, now=self.clock()
        )
        if isinstance(decision, decide.Fail):
            return await self._failed(spec, state, recorded, decision.error, output is not None)
        if isinstance(decision, decide.Reuse):
            assert recorded is not None
            state.waiting_for_claim = False
            metrics.REUSED_TOKENS.inc()
            log.info(
                "%s: token in Secret %s is valid until %s; next refresh at %s (no exchange needed)",
                spec.key,
                spec.output.name,
                rfc3339(recorded.expires_at),
                rfc3339(decision.due),
            )
            await self._succeeded(
                spec, state, recorded.issued_at, recorded.expires_at, decision.due
            )
            if spec.rollout_targets and output is not None:
                await self.rollouts.ensure(spec, access_token_in(spec, output))
            return decision.due
        assert inputs is not None
        floor = schedule.next_exchange_allowed(state.last_exchange)
        if floor > self.clock():
            # Triggers (Secret events, retries) never bring two exchanges closer than the floor.
            return floor
        return await self._exchange(spec, state, inputs, recorded, output)

    async def _unresolved(
        self, spec: OAuthClientSpec, state: ClientState, exc: OAuthError | KubeError
    ) -> float:
        """spec.providerRef cannot be used: the token in place (if any) stays until expiry."""
        if isinstance(exc, KubeError):
            exc = OAuthError(Outcome.TRANSIENT, reasons.KUBERNETES_ERROR, str(exc))
        try:
            output = await self.kube.get_secret(spec.key.namespace, spec.output.name)
        except KubeError:
            output = None
        recorded = None
        if output is not None and owned_by(output, spec.uid):
            recorded = recorded_token(output, spec.output.access_token_key)
        return await self._failed(spec, state, recorded, exc, output is not None)

    async def _gather(
        self, spec: OAuthClientSpec, state: ClientState
    ) -> tuple[dict[str, Any] | None, decide.Gathered, Inputs | None]:
        """The output Secret first: a failure reading the inputs must still know whether a
        valid token is in place (Ready stays True while it is)."""
        output = await self.kube.get_secret(spec.key.namespace, spec.output.name)
        if output is not None and not owned_by(output, spec.uid):
            return output, decide.Gathered(recorded=None, owned=False), None
        recorded = recorded_token(output, spec.output.access_token_key) if output else None
        try:
            inputs = await read_inputs(
                self.kube,
                self.config_maps,
                spec,
                state.unpersisted_refresh_token,
                self.settings.guard,
            )
        except OAuthError as exc:
            # So that the Secret's creation, or its opt-in, triggers a run.
            if exc.reason in (reasons.CREDENTIALS_NOT_FOUND, reasons.SECRET_NOT_OPTED_IN):
                state.credentials_fingerprint = "absent"
            return output, decide.Gathered(recorded, inputs_error=exc), None
        except KubeError as exc:
            error = OAuthError(Outcome.TRANSIENT, reasons.KUBERNETES_ERROR, str(exc))
            return output, decide.Gathered(recorded, inputs_error=error), None
        state.unpersisted_refresh_token = None  # read_inputs persisted it
        state.credentials_fingerprint = fingerprint(inputs.creds)
        state.refresh_fingerprint = refresh_fingerprint(inputs.creds)
        return output, decide.Gathered(recorded), inputs

    async def _exchange(
        self,
        spec: OAuthClientSpec,
        state: ClientState,
        inputs: Inputs,
        recorded: RecordedToken | None,
        output: dict[str, Any] | None,
    ) -> float:
        state.waiting_for_claim = False
        previous_exchange, state.last_exchange = state.last_exchange, self.clock()
        try:
            result = await self.exchanger.exchange(spec, inputs)
            token = result.token
            if result.rotated:
                state.refresh_fingerprint = result.refresh_fingerprint
            if not result.persisted:
                state.unpersisted_refresh_token = token.refresh_token
            await self._write_output(spec, token, output, inputs.template_values)
        except ClaimHeld as held:
            # Nothing was sent: the floor still counts from our last real exchange, so the
            # holder's release (a Secret event) can start ours at once.
            state.last_exchange = previous_exchange
            state.waiting_for_claim = True
            if recorded is None or recorded.expires_at <= self.clock():
                return await self._failed(spec, state, recorded, held, output is not None)
            # A short wait while a valid token is in place is no news: no status, no Event.
            log.info("%s: %s", spec.key, held.message)
            return held.claim.until
        except OAuthError as exc:
            if exc.rotated_refresh_token:  # rotated, unusable answer, not yet persisted
                state.unpersisted_refresh_token = exc.rotated_refresh_token
            return await self._failed(spec, state, recorded, exc, output is not None)
        except KubeError as exc:
            error = OAuthError(Outcome.TRANSIENT, reasons.KUBERNETES_ERROR, str(exc))
            return await self._failed(spec, state, recorded, error, output is not None)
        written = RecordedToken(token.issued_at, token.expires_at, spec.spec_hash)
        if state.unpersisted_refresh_token:
            error = OAuthError(
                Outcome.TRANSIENT,
                reasons.REFRESH_TOKEN_NOT_PERSISTED,
                "the rotated refresh token could not be written to Secret "
                f"{spec.credentials.secret_name} yet; it is kept in memory and retried",
            )
            return await self._failed(spec, state, written, error, True)
        if schedule.too_short_lived(token.issued_at, token.expires_at):
            error = OAuthError(
                Outcome.NEEDS_HUMAN,
                reasons.TOKEN_TOO_SHORT_LIVED,
                f"the provider issued a token valid for "
                f"{max(token.expires_at - token.issued_at, 0):.0f}s (expires_in, or the JWT exp "
                f"claim); the operator exchanges at most every "
                f"{schedule.MIN_EXCHANGE_INTERVAL:.0f}s per client, so it would always be "
                "expired: fix the provider's token lifetime or clock (or, for opaque tokens "
                "without expires_in, spec.refresh.defaultLifetime)",
            )
            return await self._failed(spec, state, written, error, True)
        self.rollouts.token_written(spec, token.access_token)
        due = self._plan(spec, state, written)
        state.force = False
        log.info(
            "%s: wrote a token valid until %s to Secret %s; next refresh at %s",
            spec.key,
            rfc3339(token.expires_at),
            spec.output.name,
            rfc3339(due),
        )
        await self._succeeded(spec, state, token.issued_at, token.expires_at, due, token)
        return due

    def _plan(self, spec: OAuthClientSpec, state: ClientState, token: RecordedToken) -> float:
        """The refresh time for a token, drawn once per token: a run that fires at its
        jittered time must not draw again and find itself not yet due. Keyed by whole
        seconds: the token just written has fractions, the Secret records seconds."""
        key = (int(token.issued_at), int(token.expires_at), spec.refresh)
        if state.plan is None or state.plan[0] != key:
            due = schedule.refresh_at(
                token.issued_at,
                token.expires_at,
                spec.refresh,
                self.settings.propagation_margin,
                self.rng,
            )
            state.plan = (key, due)
        return state.plan[1]

    async def _write_output(
        self,
        spec: OAuthClientSpec,
        token: Token,
        existing: dict[str, Any] | None,
        values: dict[str, str],
    ) -> None:
        ns = spec.key.namespace
        async for attempt in tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, KubeError) and e.conflict),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    existing = await self.kube.get_secret(ns, spec.output.name)
                    if existing is not None and not owned_by(existing, spec.uid):
                        raise OAuthError(
                            Outcome.NEEDS_HUMAN,
                            reasons.SECRET_NOT_OWNED,
                            f"Secret {spec.output.name} was taken over",
                        )
                body = output_secret(spec, token, existing, values)
                if existing is None:
                    await self.kube.create_secret(ns, body)
                else:
                    await self.kube.replace_secret(ns, body)

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
        state.grant_invalid_since = None
        if (
            token is None
            and state.condition is not None
            and (
                state.condition.reason,
                state.condition.observed_generation,
            )
            == (reasons.TOKEN_ISSUED, spec.generation)
        ):
            return  # resumed with a valid token and an up-to-date status: no write at all
        fields = status.success_fields(
            spec.output.name,
            issued_at,
            expires_at,
            due,
            token.token_type if token else None,
            token.scope if token else None,
        )
        message = f"token valid until {rfc3339(expires_at)}, next refresh at {rfc3339(due)}"
        await self._report(spec, state, True, reasons.TOKEN_ISSUED, message, fields)

    async def _failed(
        self,
        spec: OAuthClientSpec,
        state: ClientState,
        recorded: RecordedToken | None,
        error: OAuthError,
        output_exists: bool | None,
    ) -> float:
        """`output_exists` None: not known (the read failed)."""
        now = self.clock()
        state.failures += 1
        if error.reason == reasons.INVALID_GRANT and state.grant_invalid_since is None:
            state.grant_invalid_since = now
        retry = decide.retry_after_failure(
            error, state.failures, recorded, now, self.settings.propagation_margin, self.rng
        )
        message = retry.message
        advice = status.advice_for(error.reason, spec.key.namespace, spec.credentials.secret_name)
        if advice:
            message = f"{message}; {advice}"
        log.warning(
            "refresh of %s failed (%s): %s; retrying at %s",
            spec.key,
            retry.reason,
            message,
            rfc3339(retry.at),
        )
        secret_name = spec.output.name if output_exists or recorded else None
        if output_exists is None and state.condition is not None:
            secret_name = spec.output.name  # unknown: leave the column as it was
        fields = status.failure_fields(
            state.failures, retry.at, secret_name, state.grant_invalid_since
        )
        await self._report(spec, state, retry.ready, retry.reason, message, fields)
        return retry.at

    async def _report(
        self,
        spec: OAuthClientSpec,
        state: ClientState,
        ready: bool,
        reason: str,
        message: str,
        fields: dict[str, Any],
    ) -> None:
        state.condition = await self.reporter.report(
            spec.key, spec.uid, spec.generation, state.condition, ready, reason, message, fields
        )
