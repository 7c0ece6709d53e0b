"""The one exchange path, shared by the operator's runs and the `token` command: read the
inputs an OAuthClient names, exchange at the provider, and keep a rotated refresh token.

For a refresh_token grant the exchange happens under the refresh claim (exchange/custody.py) and,
once the request may have been sent, runs to its end even when the caller is cancelled (a
SIGTERM drain): a rotated token is persisted before anyone can use the old one again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from oauth_token_operator import metrics, reasons
from oauth_token_operator.exchange import custody
from oauth_token_operator.exchange.keyless import ServiceAccountAssertions
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import ConfigMapAPI, SecretAPI, TokenAPI
from oauth_token_operator.oauth.types import Credentials, GrantType, OAuthError, Outcome, Token
from oauth_token_operator.resource.policy import Guard
from oauth_token_operator.resource.secret_bodies import (
    check_output,
    credentials_from,
    refresh_fingerprint,
    template_values,
)
from oauth_token_operator.resource.spec import OAuthClientSpec, ServiceAccountToken
from oauth_token_operator.wire import decode_data

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Inputs:
    """What an exchange reads from the cluster."""

    secret: dict[str, Any] = field(repr=False)  # the credentials Secret as read
    creds: Credentials
    ca_pem: str | None = field(default=None, repr=False)
    # What the output templates see as values (from spec.secret and its ConfigMap).
    template_values: dict[str, str] = field(default_factory=dict, repr=False)
    tls_secret: dict[str, Any] | None = field(default=None, repr=False)  # client certificate


@dataclass(frozen=True)
class Exchanged:
    token: Token
    rotated: bool = False
    # False: the rotated refresh token could not be written yet; the caller holds it.
    persisted: bool = True

    @property
    def refresh_fingerprint(self) -> str:
        return refresh_fingerprint(self.token)


async def read_inputs(
    api: SecretAPI,
    config_maps: ConfigMapAPI,
    spec: OAuthClientSpec,
    pending_refresh_token: str | None = None,
    guard: Guard | None = None,
) -> Inputs:
    """The credentials Secret, CA bundle and template values. A rotated refresh token still
    pending from an earlier run is persisted first: nothing may use the Secret's older token
    meanwhile. The templates are tried before any exchange: one that cannot render must not
    cost a token request (or a refresh token's rotation). `guard` (the operator's tenancy):
    every Secret whose values are sent, or written back, must have opted in first."""
    ns, name = spec.key.namespace, spec.credentials.secret_name
    check = _Checks(spec, guard)
    check.endpoint()
    # No credentials Secret with spec.clientId: nothing to read.
    secret = await api.get_secret(ns, name) if name else {}
    if secret is None:
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.CREDENTIALS_NOT_FOUND,
            f"credentials Secret {name} not found in {ns}",
        )
    if name:
        check.secret(secret, name, "the client credentials")
    tls_secret = None
    if spec.client_certificate:
        tls_secret = await api.get_secret(ns, spec.client_certificate)
        if tls_secret is None:
            raise OAuthError(
                Outcome.NEEDS_HUMAN,
                reasons.CREDENTIALS_NOT_FOUND,
                f"client certificate Secret {spec.client_certificate} not found in {ns}",
            )
        check.secret(tls_secret, spec.client_certificate, "the client certificate")
    subject_secret = None
    if spec.subject_secret:
        subject_secret = await api.get_secret(ns, spec.subject_secret[0])
        if subject_secret is not None:
            check.secret(subject_secret, spec.subject_secret[0], "the subject token")
    # Every Secret that is used has opted in: now a pending refresh token may be written back.
    if pending_refresh_token is not None:
        secret = await custody.persist(api, spec, secret, pending_refresh_token)
    creds = credentials_from(spec, secret, tls_secret)
    if spec.subject_secret:
        subject_name, subject_key = spec.subject_secret
        subject = decode_data(subject_secret).get(subject_key, "").strip()
        if not subject:
            raise OAuthError(
                Outcome.TRANSIENT,  # watched: a new subject token triggers a run
                reasons.CREDENTIALS_NOT_FOUND,
                f"Secret {subject_name} not found or has no key {subject_key!r} (the subject "
                "token of spec.tokenExchange)",
            )
        creds = replace(creds, subject_token=subject)
    ca_pem = spec.provider_ca.pem if spec.provider_ca else None
    if ca_source := spec.ca_secret():
        where = f" (namespace {ca_source[0]}, of {spec.request.endpoint.provider_ref})"
        ca_pem = await read_ca_bundle(api, ca_source, where if ca_source[0] != ns else "")
    values: dict[str, str] = {}
    if spec.output.templates:
        config_map = None
        if spec.output.values_config_map:
            config_map = await config_maps.get_config_map(ns, spec.output.values_config_map)
        values = template_values(spec, config_map)
    check_output(spec, values)
    return Inputs(secret, creds, ca_pem, values, tls_secret)


async def read_ca_bundle(api: SecretAPI, source: tuple[str, str, str], where: str = "") -> str:
    """The PEM under a key of a CA bundle Secret, source (namespace, name, key); `where`
    follows the name in the message. The client's run and its provider's status read it
    alike."""
    ca_ns, ca_name, ca_key = source
    ca_pem = decode_data(await api.get_secret(ca_ns, ca_name)).get(ca_key)
    if not ca_pem:
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.INVALID_CA_BUNDLE,
            f"CA bundle Secret {ca_name}{where} not found or has no key {ca_key!r}",
        )
    return ca_pem


@dataclass(frozen=True)
class _Checks:
    spec: OAuthClientSpec
    guard: Guard | None

    def endpoint(self) -> None:
        endpoint = self.spec.request.endpoint
        destination = endpoint.issuer or endpoint.token_endpoint or ""
        if endpoint.provider:
            return  # the platform's own provider (providers.resolve checked the namespace)
        if self.guard and (refusal := self.guard.endpoint_refusal(destination)):
            raise OAuthError(Outcome.NEEDS_HUMAN, reasons.ENDPOINT_NOT_TRUSTED, refusal)

    def secret(self, body: dict[str, Any], name: str, what: str) -> None:
        client = self.spec.key.name
        if self.guard and (refusal := self.guard.secret_refusal(body, name, client, what)):
            raise OAuthError(Outcome.NEEDS_HUMAN, reasons.SECRET_NOT_OPTED_IN, refusal)


async def uncancellable(work: Coroutine[Any, Any, _T]) -> _T:
    """Runs `work` to its end even if the caller is cancelled meanwhile, then passes the
    cancellation on. For sections that must not stop halfway (a refresh request sent, its
    rotated token not yet persisted); `work` must bound its own duration."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved, so that asyncio does not warn about it
        raise asyncio.CancelledError
    return task.result()


class Exchanger:
    """Performs exchanges for any number of OAuthClients. Refresh-token exchanges that read
    the same credentials Secret take turns inside this process (a lock) and across processes
    (the claim in the Secret)."""

    def __init__(
        self,
        api: SecretAPI,
        tokens: TokenAPI,
        holder: custody.Holder,
        clock: Callable[[], float] = time.time,
        assertions: ServiceAccountAssertions | None = None,
    ) -> None:
        self.api = api
        self.tokens = tokens
        self.holder = holder
        self.clock = clock
        self.assertions = assertions
        self._turns: dict[tuple[str, str], asyncio.Lock] = {}
        # The refresh token this process last wrote to each credentials Secret (fingerprint),
        # so that the watch event of our own write is not taken for someone else's.
        self._written: dict[tuple[str, str], str] = {}

    def wrote(self, namespace: str, name: str, refresh_fingerprint: str) -> bool:
        return self._written.get((namespace, name)) == refresh_fingerprint

    async def exchange(self, spec: OAuthClientSpec, inputs: Inputs) -> Exchanged:
        if spec.request.grant_type is not GrantType.REFRESH_TOKEN:
            token = await self._call(spec, inputs.creds, inputs.ca_pem)
            return Exchanged(token)
        turn = (spec.key.namespace, spec.credentials.secret_name)
        lock = self._turns.setdefault(turn, asyncio.Lock())
        try:
            async with lock:
                return await self._refresh(spec, inputs)
        finally:
            if not lock.locked() and self._turns.get(turn) is lock:
                del self._turns[turn]  # nobody waits: keep the table small

    async def _call(self, spec: OAuthClientSpec, creds: Credentials, ca_pem: str | None) -> Token:
        # ServiceAccount tokens are minted for this request only and dropped with `creds`.
        if spec.service_account_token is not None:
            assertion = await self._mint(spec, spec.service_account_token)
            creds = replace(creds, client_assertion=assertion)
        if spec.subject_service_account is not None:
            subject = await self._mint(spec, spec.subject_service_account)
            creds = replace(creds, subject_token=subject)
        started = time.monotonic()
        try:
            token = await self.tokens.exchange(
                spec.request, creds, spec.refresh.default_lifetime, ca_pem
            )
        except OAuthError as exc:
            elapsed = time.monotonic() - started
            metrics.EXCHANGE_SECONDS.labels(exc.outcome.value).observe(elapsed)
            metrics.EXCHANGES.labels(exc.outcome.value).inc()
            if exc.reason == reasons.EXCHANGE_OUTCOME_UNKNOWN:
                metrics.OUTCOME_UNKNOWN.inc()
            raise
        metrics.EXCHANGE_SECONDS.labels("success").observe(time.monotonic() - started)
        metrics.EXCHANGES.labels("success").inc()
        return token

    async def _mint(self, spec: OAuthClientSpec, wanted: ServiceAccountToken) -> str:
        if self.assertions is None:
            raise OAuthError(
                Outcome.NEEDS_HUMAN,
                reasons.SERVICE_ACCOUNT_TOKEN_FAILED,
                "this command cannot mint ServiceAccount tokens",
            )
        endpoint = spec.request.endpoint
        destination = endpoint.issuer or endpoint.token_endpoint or ""
        return await self.assertions.mint(spec.key.namespace, wanted, destination)

    async def _refresh(self, spec: OAuthClientSpec, inputs: Inputs) -> Exchanged:
        secret, abandoned = await custody.take_claim(
            self.api, spec, inputs.secret, self.holder, self.clock()
        )
        if abandoned is not None:
            log.warning(
                "%s: took over an abandoned refresh claim of %s on Secret %s: an exchange by "
                "it may have been interrupted",
                spec.key,
                abandoned.holder,
                spec.credentials.secret_name,
            )
        # The claimed version's refresh token: current by construction (compare-and-swap).
        creds = credentials_from(spec, secret, inputs.tls_secret)
        return await uncancellable(self._refresh_claimed(spec, secret, creds, inputs.ca_pem))

    async def _refresh_claimed(
        self,
        spec: OAuthClientSpec,
        secret: dict[str, Any],
        creds: Credentials,
        ca_pem: str | None,
    ) -> Exchanged:
        try:
            token = await self._call(spec, creds, ca_pem)
        except OAuthError as exc:
            # An answer we cannot use may still carry a rotated refresh token: keep it. What
            # cannot be persisted stays on the error for the caller to hold.
            rotated = exc.rotated_refresh_token
            if rotated and rotated != creds.refresh_token:
                if await self._persist(spec, secret, rotated, time.monotonic()):
                    exc.rotated_refresh_token = None
            else:
                exc.rotated_refresh_token = None
                await custody.release(self.api, spec, secret, self.holder)
            raise
        if not token.refresh_token or token.refresh_token == creds.refresh_token:
            await custody.release(self.api, spec, secret, self.holder)
            return Exchanged(token)
        persisted = await self._persist(spec, secret, token.refresh_token, time.monotonic())
        return Exchanged(token, rotated=True, persisted=persisted)

    async def _persist(
        self, spec: OAuthClientSpec, secret: dict[str, Any], rotated: str, answered: float
    ) -> bool:
        """Writes a rotated refresh token (and releases the claim); False if it could not be
        written, in which case the caller holds it."""
        turn = (spec.key.namespace, spec.credentials.secret_name)
        self._written[turn] = refresh_fingerprint(Credentials("", refresh_token=rotated))
        try:
            await custody.persist(self.api, spec, secret, rotated)
        except KubeError as exc:
            log.warning("%s: could not persist the rotated refresh token: %s", spec.key, exc)
            return False
        metrics.ROTATION_PERSIST_SECONDS.observe(time.monotonic() - answered)
        return True
