"""The operator process: kopf run over the handlers for one Settings, started over when a
watched API goes away (a CRD deleted and installed again). cli/main.py turns flags and
environment into the Settings; this module takes them as they are."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import kopf

from oauth_token_operator.app.handlers import registry_for
from oauth_token_operator.engine.config import Settings
from oauth_token_operator.resource.policy import Tenancy

log = logging.getLogger(__name__)


def run(settings: Settings, peer_identity: str, liveness_endpoint: str | None) -> int:
    """Runs until stopped (SIGTERM: the drain, then 0). `peer_identity`: this process's
    name among its peers; `liveness_endpoint`: kopf's /healthz URL, or None."""
    guard, peering = settings.guard, settings.peering
    log.info(
        "starting: namespaces=%s selector=%s tenancy=%s trusted_endpoints=%s allow_http=%s "
        "allowed_hosts=%s concurrency=%d",
        list(settings.namespaces) or "all",
        settings.selector or "none",
        guard.tenancy.value,
        sorted(guard.trusted_endpoints) or "none",
        settings.endpoint_policy.allow_http,
        sorted(settings.endpoint_policy.allowed_hosts) or "any",
        settings.concurrency,
    )
    if guard.tenancy is Tenancy.SHARED and not guard.trusted_endpoints:
        log.warning(
            "shared tenancy with no --trusted-endpoints: every OAuthClient with an inline "
            "issuer or token endpoint is refused (EndpointNotTrusted); list the platform's "
            "endpoints, or run with --tenancy single where every OAuthClient author is trusted"
        )
    while True:
        # An asyncio.Event, not a threading one: kopf waits for a threading.Event in an
        # executor thread that nothing wakes, and asyncio.run() then waits for it at exit.
        start_over = asyncio.Event()
        try:
            kopf.run(
                registry=registry_for(settings, start_over.set),
                stop_flag=start_over,
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                standalone=peering is None,
                peering_name=peering.name if peering else None,
                # (kopf's Identity is a NewType of str that kopf does not export.)
                identity=cast(Any, peer_identity),
                priority=peering.priority if peering else 0,
                liveness_endpoint=liveness_endpoint,
            )
            if not start_over.is_set():
                return 0
        except Exception as exc:
            if not watched_api_gone(exc):
                raise
            # kopf has already run the cleanup (the drain): nothing is in flight.
            log.warning(
                "a watched API is no longer served (%s): the OAuthClient CRD was deleted? "
                "starting over; clients are picked up when it is installed again",
                exc,
            )
            time.sleep(1)


def watched_api_gone(exc: BaseException) -> bool:
    """kopf ends when a watch gets "404 page not found": its CRD observer usually stops the
    watch first when a CRD is deleted, but the two race (kopf says so in observation.py).
    kopf does not export its APINotFoundError; it carries the status."""
    return getattr(exc, "status", None) == 404
