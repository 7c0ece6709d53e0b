"""Custody of a refresh token: one user of it at a time, across processes, and a rotated
token made durable before anything else happens.

Providers that rotate refresh tokens revoke the whole grant when an old one is used again,
so two users of one refresh token (two OAuthClients sharing a credentials Secret, the
operator and `oauth-token-operator token`, two replicas during a handover) must take turns,
each using the token its predecessor persisted. The credentials Secret itself carries the
turn: a claim annotation naming the holder and until when. The claim is written with the
Secret's resourceVersion as precondition, so winning it is a compare-and-swap over the very
Secret version whose refresh token is then used; the rotated token is written back with the
claim removed, in one replace. The claim holds no secret value."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import tenacity

from oauth_token_operator import reasons
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import SecretAPI
from oauth_token_operator.oauth.types import OAuthError, Outcome
from oauth_token_operator.resource.spec import API_GROUP, OAuthClientSpec
from oauth_token_operator.wire import encode_data, parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

CLAIM_ANNOTATION = f"{API_GROUP}/refresh-claim"
# How long a claim stands without being released: longer than one exchange (its deadline)
# plus persisting the answer, so a live holder is never overtaken; short enough that a
# holder that died (SIGKILL, a lost node) blocks the grant for a bounded time only.
CLAIM_TTL = 90.0
# A rotated refresh token is written with the token in hand this many times (fresh read on
# each conflict or API error); the old token is never sent again.
PERSIST_ATTEMPTS = 6
CLAIM_ATTEMPTS = 4


@dataclass(frozen=True)
class Holder:
    """Who takes claims: a stable identity (the pod name for the operator) plus a random
    instance, so that a restarted process recognises its dead predecessor's claims."""

    identity: str
    instance: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def id(self) -> str:
        return f"{self.identity}/{self.instance}"

    @classmethod
    def for_cli(cls) -> Holder:
        # Each CLI run is an identity of its own: two runs at once on one machine must wait
        # for each other, never take each other's claim for a dead predecessor's.
        return cls(f"cli@{socket.gethostname()}:{secrets.token_hex(4)}")


@dataclass(frozen=True)
class Claim:
    holder: str
    until: float

    def render(self) -> str:
        return json.dumps({"holder": self.holder, "until": rfc3339(self.until)})

    @classmethod
    def parse(cls, value: str | None) -> Claim | None:
        try:
            raw = json.loads(value or "")
            until = parse_rfc3339(raw.get("until"))
            holder = raw.get("holder")
        except (ValueError, AttributeError):
            return None
        if not isinstance(holder, str) or until is None:
            return None
        return cls(holder, until)


class ClaimStatus(Enum):
    FREE = "free"
    MINE = "mine"
    HELD = "held"  # a live claim of someone else: wait for it
    ABANDONED = "abandoned"  # expired, or left by a dead earlier instance of this holder


def claim_of(secret: dict[str, Any]) -> Claim | None:
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return Claim.parse(annotations.get(CLAIM_ANNOTATION))


def claim_status(claim: Claim | None, me: Holder, now: float) -> ClaimStatus:
    if claim is None:
        return ClaimStatus.FREE
    if claim.holder == me.id:
        return ClaimStatus.MINE
    identity, _, _ = claim.holder.rpartition("/")
    if claim.until <= now or identity == me.identity:
        return ClaimStatus.ABANDONED
    return ClaimStatus.HELD


def _with_annotation(secret: dict[str, Any], value: str | None) -> dict[str, Any]:
    metadata = dict(secret.get("metadata") or {})
    annotations = dict(metadata.get("annotations") or {})
    if value is None:
        annotations.pop(CLAIM_ANNOTATION, None)
    else:
        annotations[CLAIM_ANNOTATION] = value
    metadata["annotations"] = annotations
    return {**secret, "metadata": metadata}


def with_claim(secret: dict[str, Any], claim: Claim) -> dict[str, Any]:
    return _with_annotation(secret, claim.render())


def with_refresh_token(secret: dict[str, Any], key: str, refresh_token: str) -> dict[str, Any]:
    """The credentials Secret with a rotated refresh token and no claim, keeping
    resourceVersion as the precondition of the replace."""
    data = dict(secret.get("data") or {})
    data.update(encode_data({key: refresh_token}))
    return {**_with_annotation(secret, None), "data": data}


class ClaimHeld(OAuthError):
    """Someone else is using this refresh token right now."""

    def __init__(self, secret_name: str, claim: Claim, now: float) -> None:
        super().__init__(
            Outcome.TRANSIENT,
            reasons.REFRESH_TOKEN_IN_USE,
            f"the refresh token in Secret {secret_name} is being used by {claim.holder} "
            f"until {rfc3339(claim.until)} at the latest; waiting for its turn",
            retry_after=max(claim.until - now, 1.0),
        )
        self.claim = claim


async def _reread(api: SecretAPI, spec: OAuthClientSpec) -> dict[str, Any]:
    secret = await api.get_secret(spec.key.namespace, spec.credentials.secret_name)
    if secret is None:
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.CREDENTIALS_NOT_FOUND,
            f"credentials Secret {spec.credentials.secret_name} was deleted",
        )
    return secret


async def take_claim(
    api: SecretAPI, spec: OAuthClientSpec, secret: dict[str, Any], me: Holder, now: float
) -> tuple[dict[str, Any], Claim | None]:
    """Claims the refresh token in the credentials Secret. Returns the Secret as written
    (its refresh token is the one to use) and the abandoned claim it replaced, if any.
    Raises ClaimHeld while someone else's claim stands."""
    for _ in range(CLAIM_ATTEMPTS):
        previous = claim_of(secret)
        status = claim_status(previous, me, now)
        if status is ClaimStatus.HELD:
            assert previous is not None
            raise ClaimHeld(spec.credentials.secret_name, previous, now)
        body = with_claim(secret, Claim(me.id, now + CLAIM_TTL))
        try:
            written = await api.replace_secret(spec.key.namespace, body)
        except KubeError as exc:
            if not exc.conflict:
                raise
            secret = await _reread(api, spec)
            continue
        return written, previous if status is ClaimStatus.ABANDONED else None
    raise KubeError(409, f"Secret {spec.credentials.secret_name} kept changing")


async def persist(
    api: SecretAPI, spec: OAuthClientSpec, secret: dict[str, Any], refresh_token: str
) -> dict[str, Any]:
    """Writes the refresh token in hand into the credentials Secret (releasing the claim in
    the same write), retrying conflicts and API errors with a fresh read; never exchanges
    again to get another one."""
    key, name = spec.credentials.refresh_token, spec.credentials.secret_name
    async for attempt in tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(PERSIST_ATTEMPTS),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        retry=tenacity.retry_if_exception_type(KubeError),
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                secret = await api.get_secret(spec.key.namespace, name) or secret
            secret = await api.replace_secret(
                spec.key.namespace, with_refresh_token(secret, key, refresh_token)
            )
    return secret


async def release(
    api: SecretAPI, spec: OAuthClientSpec, secret: dict[str, Any], me: Holder
) -> None:
    """Removes our claim when the refresh token was not rotated. Best effort: a claim that
    cannot be removed expires by itself."""
    for _ in range(2):
        claim = claim_of(secret)
        if claim is None or claim.holder != me.id:
            return
        try:
            await api.replace_secret(spec.key.namespace, _with_annotation(secret, None))
            return
        except KubeError as exc:
            if not exc.conflict:
                log.warning("could not release the refresh claim on %s: %s", spec.key, exc)
                return
            try:
                secret = await _reread(api, spec)
            except (KubeError, OAuthError):
                return
