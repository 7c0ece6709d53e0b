"""What one run does for one OAuthClient: gather what is in the cluster, decide (engine/decide.py,
pure), apply the decision (exchange/exchanger.py, the output Secret), and report (engine/report.py).

The split follows cert-manager's certificate controllers: engine/refresh.py decides *when* a run
happens, this module *what* it does, engine/report.py and resource/status.py *what it says*."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from oauth_token_operator import metrics, reasons
from oauth_token_operator.engine import decide, outcome, schedule
from oauth_token_operator.engine.config import Settings
from oauth_token_operator.engine.report import Reporter
from oauth_token_operator.engine.rollout import Restarter
from oauth_token_operator.exchange.custody import ClaimHeld
from oauth_token_operator.exchange.exchanger import Exchanger, Inputs, read_inputs
from oauth_token_operator.exchange.providers import resolve
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import ConfigMapAPI, ProviderAPI, SecretAPI, StatusAPI
from oauth_token_operator.oauth.types import OAuthError, Outcome, Token
from oauth_token_operator.resource import status
from oauth_token_operator.resource.secret_bodies import (
    RecordedToken,
    access_token_in,
    adopted,
    fingerprint,
    ours,
    output_secret,
    owned_by,
    recorded_token,
    refresh_fingerprint,
)
from oauth_token_operator.resource.spec import OAuthClientSpec, RefreshPolicy
from oauth_token_operator.wire import rfc3339

log = logging.getLogger(__name__)


_API_REASONS = frozenset({reasons.KUBERNETES_ERROR, reasons.REFRESH_TOKEN_NOT_PERSISTED})
# Drift repairs of one output Secret are at least this far apart.
MIN_REPAIR_INTERVAL = 10.0
# A credentials fingerprint no Secret has: the last run could not use the client's inputs.
UNUSABLE = "unusable"


@dataclass
class ClientState:
    """What the operator remembers about one OAuthClient between runs."""

    spec: OAuthClientSpec | None
    condition: status.Condition | None
    failures: int = 0
    # The next run must exchange even if the token in place is valid: the credentials or the
    # spec changed after a failure, or the output Secret vanished.
    force: bool = False
    # Identifies the client ID/secret/key last used (UNUSABLE: the inputs could not be read
    # or used), and the refresh token last read or written.
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
    # What an earlier process recorded in status; used by the first run after a restart.
    resumed: status.Resumed | None = None
    # The output Secret as the operator last wrote it, when someone else changed it since
    # (secret_bodies.repaired); the next run writes it back.
    repair: dict[str, Any] | None = field(default=None, repr=False)
    last_repair: float | None = None
    # The last run failed because the Kubernetes API did not do its part.
    api_failing: bool = False
    # The reason of the last failure ("" after a success): a provider's change runs the
    # clients that failed because of it (provider_watch).
    failure_reason: str = ""


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
            spec = await resolve(self.providers, spec, self.settings.operator_namespace)
        except (OAuthError, KubeError) as exc:
            return await self._unresolved(spec, state, exc)
        try:
            output, gathered, inputs = await self._gather(spec, state)
        except KubeError as exc:
            return await self._failed(
                spec,
                state,
                None,
                _api_failure(spec, state, exc),
                None,
            )
        recorded = gathered.recorded
        planned = self._plan(spec, state, recorded) if recorded is not None else None
        decision = decide.decide(
            spec, gathered, force=state.force, planned_due=planned, now=self.clock()
        )
        resumed, state.resumed = state.resumed, None
        if not isinstance(decision, decide.Reuse):
            held = decide.resumed_retry(
                resumed, spec.generation, force=state.force, now=self.clock()
            )
            if held is not None:
                log.info(
                    "%s: was failing before the restart (%d failures); next try at %s, as "
                    "its status says",
                    spec.key,
                    state.failures,
                    rfc3339(held),
                )
                return held
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
            exc = _api_failure(spec, state, exc)  # a held refresh token stays the news
        try:
            output = await self.kube.get_secret(spec.key.namespace, spec.output.name)
        except KubeError:
            output = None
        recorded = None
        if output is not None and ours(output, spec):
            recorded = recorded_token(output, spec.output.access_token_key)
        return await self._failed(spec, state, recorded, exc, output is not None)

    async def _gather(
        self, spec: OAuthClientSpec, state: ClientState
    ) -> tuple[dict[str, Any] | None, decide.Gathered, Inputs | None]:
        """The output Secret first: a failure reading the inputs must still know whether a
        valid token is in place (Ready stays True while it is)."""
        ns = spec.key.namespace
        output = await self.kube.get_secret(ns, spec.output.name)
        if output is not None and not ours(output, spec):
            return output, decide.Gathered(recorded=None, owned=False), None
        if output is not None and not owned_by(output, spec.uid):
            # At once, not with the next token: the garbage collector deletes a Secret
            # whose owner is gone.
            output = await self.kube.replace_secret(ns, adopted(output, spec))
            log.info(
                "%s: adopted Secret %s, written for an earlier OAuthClient of this name",
                spec.key,
                spec.output.name,
            )
        if state.repair is not None:
            output = await self._repair(spec, state, output)
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
            # Whatever is wrong (missing, wrong keys, a bad CA bundle), any change of a
            # Secret it reads triggers a run: the fix is seen within seconds, not at a timer.
            state.credentials_fingerprint = UNUSABLE
            return output, decide.Gathered(recorded, inputs_error=exc), None
        except KubeError as exc:
            error = _api_failure(spec, state, exc)
            return output, decide.Gathered(recorded, inputs_error=error), None
        state.unpersisted_refresh_token = None  # read_inputs persisted it
        state.credentials_fingerprint = fingerprint(inputs.creds)
        state.refresh_fingerprint = refresh_fingerprint(inputs.creds)
        return output, decide.Gathered(recorded), inputs

    async def _repair(
        self, spec: OAuthClientSpec, state: ClientState, output: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Puts back what the operator last wrote into an output Secret someone changed:
        the token in hand, no token request. At most once per MIN_REPAIR_INTERVAL, so a
        writer that keeps fighting gets no hot loop."""
        repair, state.repair = state.repair, None
        now = self.clock()
        if output is None or repair is None:
            return output
        if state.last_repair is not None and now < state.last_repair + MIN_REPAIR_INTERVAL:
            return output  # the next due run writes the Secret anyway
        state.last_repair = now
        try:
            written = await self.kube.replace_secret(spec.key.namespace, repair)
        except KubeError as exc:  # changed again (409) or gone: its watch event decides anew
            log.info("%s: could not restore Secret %s: %s", spec.key, spec.output.name, exc)
            return output
        log.info(
            "%s: Secret %s was changed by someone else; restored the token in place",
            spec.key,
            spec.output.name,
        )
        await self.reporter.api.post_event(
            spec.key,
            spec.uid,
            "Warning",
            reasons.SECRET_RESTORED,
            f"Secret {spec.output.name} was changed by someone else; the operator restored "
            "its token (change the OAuthClient's spec.secret instead)",
        )
        return written

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
            error = _api_failure(spec, state, exc)
            return await self._failed(spec, state, recorded, error, output is not None)
        written = RecordedToken(token.issued_at, token.expires_at, spec.spec_hash)
        if state.unpersisted_refresh_token:
            error = decide.api_failure(spec, "", holding_refresh_token=True)
            return await self._failed(spec, state, written, error, True)
        if short := outcome.too_short_lived(token):
            return await self._failed(spec, state, written, short, True)
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
            margin = self.settings.propagation_margin
            due = decide.resumed_plan(state.resumed, spec.generation, token.expires_at, margin)
            if due is None:
                due = schedule.refresh_at(
                    token.issued_at, token.expires_at, spec.refresh, margin, self.rng
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
                    if existing is not None and not ours(existing, spec):
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
        state.api_failing = False
        state.failure_reason = ""
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
        await self._report(spec, state, outcome.succeeded(spec, issued_at, expires_at, due, token))

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
        state.api_failing = error.reason in _API_REASONS
        state.failure_reason = error.reason
        if error.reason == reasons.INVALID_GRANT and state.grant_invalid_since is None:
            state.grant_invalid_since = now
        retry = decide.retry_after_failure(
            error, state.failures, recorded, now, self.settings.propagation_margin, self.rng
        )
        report = outcome.failed(
            spec,
            error,
            retry,
            state.failures,
            output_exists,
            had_token=recorded is not None,
            had_status=state.condition is not None,
            grant_invalid_since=state.grant_invalid_since,
        )
        log.warning(
            "refresh of %s failed (%s): %s; retrying at %s",
            spec.key,
            retry.reason,
            report.message,
            rfc3339(retry.at),
        )
        await self._report(spec, state, report)
        return retry.at

    async def _report(
        self, spec: OAuthClientSpec, state: ClientState, report: outcome.Report
    ) -> None:
        state.condition = await self.reporter.report(
            spec.key,
            spec.uid,
            spec.generation,
            state.condition,
            report.ready,
            report.reason,
            report.message,
            report.fields,
        )


def _api_failure(spec: OAuthClientSpec, state: ClientState, exc: KubeError) -> OAuthError:
    return decide.api_failure(spec, str(exc), state.unpersisted_refresh_token is not None)
