"""Rollout targets: restart the workloads that read a token only at start (environment
variables, subPath mounts) when their client's token changes.

A restart is a pod-template annotation per client, `token.oauth-token-operator.dev/<client>`,
holding a hash of the token the pods should start with (as `kubectl rollout restart` does
with a timestamp). Keeping the hash, not a time, makes the check idempotent: after a crash
or a restart of the operator, a target whose annotation differs from the token in the output
Secret is restarted, one whose annotation matches is left alone. Requests for one workload
are gathered for a few seconds and a workload is restarted at most every 15 s, so a burst of
refreshes (several clients, or the operator's start) restarts it once. The interval stays
well inside the propagation margin: a restart held back past it would leave pods running
with a token about to expire."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field

from oauth_token_operator import reasons
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import StatusAPI, WorkloadAPI
from oauth_token_operator.resource.policy import (
    ALLOWED_CLIENTS_ANNOTATION,
    Tenancy,
    secret_use_refusal,
)
from oauth_token_operator.resource.spec import API_GROUP, OAuthClientSpec, ObjectKey, RolloutTarget

log = logging.getLogger(__name__)

GATHER_SECONDS = 5.0
MIN_INTERVAL = 15.0


def annotation_key(client: str) -> str:
    """`token.<group>/<client>`; the name part may hold 63 characters, a client name 253."""
    if len(client) > 63:
        client = f"{client[:46]}-{hashlib.sha256(client.encode()).hexdigest()[:16]}"
    return f"token.{API_GROUP}/{client}"


def token_hash(access_token: str) -> str:
    """Tells tokens apart without revealing one (a truncated SHA-256 of a random token)."""
    return hashlib.sha256(access_token.encode()).hexdigest()[:16]


@dataclass
class _Pending:
    annotations: dict[str, str] = field(default_factory=dict)
    # Who asked (for Events): client key -> uid.
    requesters: dict[ObjectKey, str] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


Workload = tuple[str, str, str]  # namespace, kind, name


class Restarter:
    def __init__(
        self,
        api: WorkloadAPI,
        status_api: StatusAPI,
        gather: float = GATHER_SECONDS,
        min_interval: float = MIN_INTERVAL,
        tenancy: Tenancy = Tenancy.SINGLE,
    ) -> None:
        self.api = api
        # Shared: a workload is restarted only for the clients its allowed-clients names.
        self.tenancy = tenancy
        self.status_api = status_api
        self.gather = gather
        self.min_interval = min_interval
        self._pending: dict[Workload, _Pending] = {}
        self._last: dict[Workload, float] = {}

    @staticmethod
    def _now() -> float:
        # The event loop's clock, the one asyncio.sleep waits on (not the wall clock).
        return asyncio.get_running_loop().time()

    def token_written(self, spec: OAuthClientSpec, access_token: str) -> None:
        """A new token is in the output Secret: restart every target (gathered)."""
        for target in spec.rollout_targets:
            self._request(spec, target, token_hash(access_token))

    async def ensure(self, spec: OAuthClientSpec, access_token: str) -> None:
        """A run that kept the token in place (a resume after a restart or a crash): restart
        the targets whose pods were not started for this token."""
        wanted = token_hash(access_token)
        key = annotation_key(spec.key.name)
        for target in spec.rollout_targets:
            workload = (spec.key.namespace, target.kind, target.name)
            pending = self._pending.get(workload)
            if pending is not None and pending.annotations.get(key) == wanted:
                continue
            try:
                current = await self.api.get_pod_template_annotations(*workload)
            except KubeError as exc:
                await self._failed(spec.key, spec.uid, workload, exc)
                continue
            if current is None:
                await self._missing(spec.key, spec.uid, workload)
            elif current.get(key) != wanted:
                self._request(spec, target, wanted)

    async def flush(self) -> None:
        """Restart what is pending now (the operator is stopping)."""
        for workload in list(self._pending):
            pending = self._pending[workload]
            if pending.task is not None:
                pending.task.cancel()
            await self._restart(workload)

    def _request(self, spec: OAuthClientSpec, target: RolloutTarget, wanted: str) -> None:
        workload = (spec.key.namespace, target.kind, target.name)
        self._merge(workload, {annotation_key(spec.key.name): wanted}, spec.key, spec.uid, True)

    def _merge(
        self,
        workload: Workload,
        annotations: dict[str, str],
        key: ObjectKey,
        uid: str,
        newer: bool,
    ) -> None:
        pending = self._pending.setdefault(workload, _Pending())
        for name, value in annotations.items():
            if newer or name not in pending.annotations:  # a retry never undoes a newer one
                pending.annotations[name] = value
        pending.requesters[key] = uid
        if pending.task is None:
            last = self._last.get(workload)
            delay = self.gather
            if last is not None:
                delay = max(delay, last + self.min_interval - self._now())
            pending.task = asyncio.create_task(self._restart_later(workload, delay))

    async def _restart_later(self, workload: Workload, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._restart(workload)

    async def _restart(self, workload: Workload) -> None:
        pending = self._pending.pop(workload, None)
        if pending is None:
            return
        namespace, kind, name = workload
        self._last[workload] = self._now()
        if self.tenancy is Tenancy.SHARED and not await self._opted_in(workload, pending):
            return
        try:
            found = await self.api.patch_pod_template_annotations(
                namespace, kind, name, pending.annotations
            )
        except KubeError as exc:
            for key, uid in pending.requesters.items():
                await self._failed(key, uid, workload, exc)
            if exc.status != 403:  # a person must grant it; anything else may pass
                for key, uid in pending.requesters.items():
                    self._merge(workload, pending.annotations, key, uid, False)
            return
        for key, uid in pending.requesters.items():
            if not found:
                await self._missing(key, uid, workload)
                continue
            log.info("%s: restarted %s %s/%s for a new token", key, kind, namespace, name)
            await self.status_api.post_event(
                key, uid, "Normal", reasons.ROLLOUT_RESTARTED, f"restarted {kind} {name}"
            )

    async def _opted_in(self, workload: Workload, pending: _Pending) -> bool:
        """Drops the requests of clients the workload did not name (a Warning Event each);
        False when none is left, or the workload could not be read."""
        namespace, kind, name = workload
        try:
            annotations = await self.api.get_workload_annotations(namespace, kind, name)
        except KubeError as exc:
            for key, uid in pending.requesters.items():
                await self._failed(key, uid, workload, exc)
            return False
        for key, uid in list(pending.requesters.items()):
            if annotations is None:
                await self._missing(key, uid, workload)
                continue
            body = {"metadata": {"annotations": annotations}}
            refusal = secret_use_refusal(body, f"{kind} {name}", key.name, self.tenancy, "")
            if refusal:
                del pending.requesters[key]
                pending.annotations.pop(annotation_key(key.name), None)
                message = (
                    f"{kind} {name} is not restarted: its annotation {ALLOWED_CLIENTS_ANNOTATION} "
                    f"does not name OAuthClient {key.name} (shared tenancy)"
                )
                log.warning("%s: %s", key, message)
                await self.status_api.post_event(
                    key, uid, "Warning", reasons.ROLLOUT_TARGET_NOT_OPTED_IN, message
                )
        return annotations is not None and bool(pending.requesters)

    async def _missing(self, key: ObjectKey, uid: str, workload: Workload) -> None:
        _, kind, name = workload
        message = f"rollout target {kind} {name} not found in {key.namespace}"
        log.warning("%s: %s", key, message)
        await self.status_api.post_event(
            key, uid, "Warning", reasons.ROLLOUT_TARGET_NOT_FOUND, message
        )

    async def _failed(self, key: ObjectKey, uid: str, workload: Workload, exc: KubeError) -> None:
        _, kind, name = workload
        hint = (
            " (the chart grants this with rolloutTargets.enabled=true)" if exc.status == 403 else ""
        )
        message = f"could not restart {kind} {name}: {exc}{hint}"
        log.warning("%s: %s", key, message)
        await self.status_api.post_event(key, uid, "Warning", reasons.ROLLOUT_FAILED, message)
