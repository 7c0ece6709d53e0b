"""kopf registrations, and nothing else: each handler turns an event into one call on the
Refresher. All logic lives in refresh.py; the Refresher lives in kopf's memo."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .config import Settings
from .kube import Kube
from .oauth import TokenClient
from .refresh import Refresher
from .spec import API_GROUP, API_VERSION, PLURAL, ObjectKey

log = logging.getLogger(__name__)


def registry_for(settings: Settings) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers, bound to these settings."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same sources as Kube.connect(): in-cluster service account, else KUBECONFIG.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        return info or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="start", registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings)
        kube = await Kube.connect()
        memo.refresher = Refresher(
            kube, TokenClient(operator_settings.endpoint_policy), operator_settings
        )
        memo.scheduler = asyncio.create_task(memo.refresher.scheduler.run(), name="scheduler")

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        # SIGTERM (a rollout, helm upgrade, node drain): finish runs in flight, so that no
        # rotated refresh token is thrown away with a cancelled run.
        cancelled = await memo.refresher.scheduler.drain(operator_settings.drain_timeout)
        log.info("drained; %d runs cancelled after the drain timeout", cancelled)
        memo.scheduler.cancel()
        await asyncio.gather(memo.scheduler, return_exceptions=True)
        await memo.refresher.tokens.aclose()
        await memo.refresher.kube.close()

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, id="oauthclient", registry=registry)
    async def oauthclient_event(
        event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
    ) -> None:
        if event["type"] == "DELETED":
            memo.refresher.forget(ObjectKey(namespace or "", name))
        else:
            await memo.refresher.observe(event["object"])

    @kopf.on.event("", "v1", "secrets", id="secret", registry=registry)
    async def secret_event(  # async: kopf runs plain functions in a thread pool
        event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
    ) -> None:
        deleted = event["type"] == "DELETED"
        memo.refresher.secret_changed(
            namespace or "", name, None if deleted else dict(event["object"])
        )

    operator_settings = settings
    return registry


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # Only event handlers are registered: kopf keeps no per-object progress or diff-base
    # annotations and adds no finalizers, so it never writes to users' objects.
    settings.scanning.disabled = True  # no CRD/namespace watching: less RBAC, less memory
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
