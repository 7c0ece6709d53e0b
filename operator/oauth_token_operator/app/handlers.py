"""kopf registrations, and nothing else: each handler turns an event into one call on the
Refresher. All logic lives in engine/refresh.py; the Refresher lives in kopf's memo."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from oauth_token_operator import metrics
from oauth_token_operator.app.peering import follow
from oauth_token_operator.app.provider_watch import ProviderMonitor
from oauth_token_operator.engine.config import Peering, Settings
from oauth_token_operator.engine.refresh import Refresher
from oauth_token_operator.exchange.providers import PLURALS
from oauth_token_operator.kube.client import Kube
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.secret_feed import SecretFeed
from oauth_token_operator.kube.secret_lists import SecretLists
from oauth_token_operator.oauth.client import TokenClient
from oauth_token_operator.oauth.types import PROVIDER_KIND
from oauth_token_operator.resource.spec import API_GROUP, API_VERSION, KIND, PLURAL, ObjectKey

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
# While the CRD was missing at start: how often to look for OAuthClients kopf did not bring,
# and how long to give kopf once there are some.
CRD_POLL = 2.0
CRD_GRACE = 6.0
# The operator's CRDs by name, and their kinds.
_CRDS = {f"{plural}.{API_GROUP}": kind for kind, plural in ((KIND, PLURAL), *PLURALS.items())}


def registry_for(
    settings: Settings, start_over: Callable[[], None] = lambda: None
) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers, bound to these settings. `start_over` stops
    kopf so that the caller runs it again (see _serve_once_installed)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same sources as Kube.connect(): in-cluster service account, else KUBECONFIG.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        if info is not None:
            # kopf assumes https://kubernetes.default.svc, which needs cluster DNS (not there
            # for hostNetwork pods, among others); Kube.connect() and client-go use the
            # address kubelet gives every pod.
            info = dataclasses.replace(info, server=in_cluster_server(os.environ) or info.server)
        return info or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="start", registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings, operator_settings.selector)
        kube = await Kube.connect()
        tokens = TokenClient(operator_settings.endpoint_policy)
        memo.refresher = Refresher(kube, tokens, operator_settings)
        memo.scheduler = asyncio.create_task(memo.refresher.scheduler.run(), name="scheduler")
        # Providers' status, and their changes to their clients (provider_watch).
        memo.providers = ProviderMonitor(
            kube,
            memo.refresher.secrets,
            tokens,
            operator_settings,
            memo.refresher.wake_provider_clients,
            memo.refresher.release_secret,
        )
        memo.refresher.follower = memo.providers
        memo.provider_checks = asyncio.create_task(
            memo.providers.scheduler.run(), name="provider checks"
        )
        # Secrets are watched outside kopf (see secret_watch, secret_feed), starting before
        # kopf watches OAuthClients, so that most first runs find their Secrets in memory.
        # Each watch holds a connection for good: their own pool, so that any number of
        # namespaces never takes connections from the runs.
        memo.watching = await Kube.connect(connections=0)
        refresher = memo.refresher
        memo.secret_feed = SecretFeed(memo.watching, refresher.secrets, refresher.secret_changed)
        lists = SecretLists(memo.watching.api_client)
        memo.secret_watches = [
            asyncio.create_task(watch.run(), name=f"secret watch {watch.selector} {namespace}")
            for namespace in operator_settings.namespaces or (None,)
            for watch in memo.secret_feed.watches(lists, namespace)
        ]
        metrics.publish_clients(memo.refresher.client_samples)
        memo.follower = None
        memo.kube = kube
        memo.oauthclient_events = 0
        memo.crd_waiter = None
        if not await _say_whether_served(
            kube, operator_settings.namespaces, operator_settings.selector
        ):
            memo.crd_waiter = asyncio.create_task(
                _serve_once_installed(kube, operator_settings, memo, start_over)
            )
        memo.provider_events = dict.fromkeys(PLURALS, 0)
        memo.provider_waiters = [
            wait_for_provider_crd(memo, kind)
            for kind in await _providers_not_served(kube, operator_settings.namespaces)
        ]
        if peering := operator_settings.peering:
            # Before kopf starts its peering keepalive, which only patches the object.
            await kube.ensure_peerings(peering.name, operator_settings.namespaces)
            memo.follower = asyncio.create_task(
                follow_peering(kube, memo.refresher, memo.providers, peering)
            )
        freeze_start_up_objects()

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        tasks = (memo.follower, memo.crd_waiter, *memo.secret_watches, *memo.provider_waiters)
        for task in (*tasks, memo.provider_checks):
            if task is not None:
                task.cancel()
        memo.secret_feed.cancel()
        # SIGTERM (a rollout, helm upgrade, node drain): finish runs in flight, so that no
        # rotated refresh token is thrown away with a cancelled run.
        started = time.monotonic()
        cancelled = await memo.refresher.scheduler.drain(operator_settings.drain_timeout)
        log.info("drained; %d runs cancelled after the drain timeout", cancelled)
        # Rotated refresh tokens held in memory (the API server was away) get what is left
        # of the drain timeout to be written.
        left = max(operator_settings.drain_timeout - (time.monotonic() - started), 1.0)
        if await memo.refresher.persist_held(left):
            log.error("stopping with rotated refresh tokens that could not be written")
        # Restarts still being gathered go out now (a successor would find and do them too).
        flushing = asyncio.ensure_future(memo.refresher.rollouts.flush())
        if (await asyncio.wait({flushing}, timeout=CLOSE_TIMEOUT))[1]:
            log.warning("rollout restarts not sent within %.0fs", CLOSE_TIMEOUT)
        memo.scheduler.cancel()
        # Nothing is in flight any more: stopping the loop and closing connections must not
        # hold the exit (and the pod's grace period) however a peer behaves.
        stuck = (await asyncio.wait({memo.scheduler}, timeout=CLOSE_TIMEOUT))[1]
        if stuck:
            log.warning("the scheduler did not stop within %.0fs; exiting anyway", CLOSE_TIMEOUT)
        for close in (memo.refresher.tokens.aclose, memo.refresher.kube.close, memo.watching.close):
            closing = asyncio.ensure_future(close())
            stuck = (await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT))[1]
            if stuck:
                log.warning("connections not closed within %.0fs; exiting anyway", CLOSE_TIMEOUT)

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, id="oauthclient", registry=registry)
    async def oauthclient_event(
        event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
    ) -> None:
        memo.oauthclient_events += 1
        if event["type"] == "DELETED":
            memo.refresher.forget(ObjectKey(namespace or "", name))
        else:
            await memo.refresher.observe(event["object"])

    def on_provider(kind: str) -> None:
        @kopf.on.event(API_GROUP, API_VERSION, PLURALS[kind], id=PLURALS[kind], registry=registry)
        async def provider_event(
            event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
        ) -> None:
            memo.provider_events[kind] += 1
            if event["type"] == "DELETED":
                memo.providers.forget(kind, namespace, name)
            else:
                memo.providers.observe(kind, event["object"])

    for kind in PLURALS:
        on_provider(kind)

    def wait_for_provider_crd(memo: kopf.Memo, kind: str) -> asyncio.Task[None]:
        """kopf may not serve a provider CRD installed after it started, as for OAuthClients'
        (see _serve_once_installed): then start over once providers of it exist."""
        return asyncio.create_task(
            _start_over_once_served(
                f"{kind} CRD",
                lambda: int(memo.provider_events[kind]),
                _objects_exist(memo.kube, kind, operator_settings.namespaces),
                start_over,
            )
        )

    @kopf.on.event(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        id="crd",
        registry=registry,
        when=lambda name, **_: name in _CRDS,
    )
    async def crd_event(event: kopf.RawEvent, name: str, memo: kopf.Memo, **_: Any) -> None:
        if event["type"] == "DELETED" and _CRDS[name] != KIND:
            kind = _CRDS[name]
            memo.provider_events[kind] = 0
            memo.provider_waiters.append(wait_for_provider_crd(memo, kind))
        elif event["type"] == "DELETED" and memo.crd_waiter is None:
            # Installed again later, it may not be served (see _serve_once_installed).
            memo.oauthclient_events = 0
            memo.crd_waiter = asyncio.create_task(
                _serve_once_installed(memo.kube, operator_settings, memo, start_over)
            )

    operator_settings = settings
    return registry


def freeze_start_up_objects() -> None:
    """Out of the garbage collector's sight: what start-up made (modules, classes, functions:
    ~95,000 objects, 40 % of all at 6,000 clients) lives as long as the process, yet each
    full collection walked it, a pause of the event loop every ~7 s at 100 refreshes/s (median
    0.19 s, 0.15 s frozen; bench/README.md). Once per process, before any client: a frozen
    object that later became part of a garbage cycle would never be freed."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


async def follow_peering(
    kube: Kube, refresher: Refresher, providers: ProviderMonitor, peering: Peering
) -> None:
    namespaces = refresher.settings.namespaces

    async def on_change(acting: bool) -> None:
        if acting:
            selector = refresher.settings.selector
            await refresher.take_over(await kube.list_oauthclients(namespaces, selector))
        else:
            refresher.stand_by()
            providers.stand_by()  # kopf lists them again when this replica acts again

    await follow(
        lambda: kube.get_peerings(peering.name, namespaces),
        peering.identity,
        peering.priority,
        on_change,
        time.time,
    )


async def _say_whether_served(kube: Kube, namespaces: tuple[str, ...], selector: str) -> bool:
    """False (and says so) when the OAuthClient CRD is not installed."""
    try:
        served = await kube.oauthclients_served(namespaces, selector)
    except KubeError as exc:
        if exc.status == 400 and selector:
            raise kopf.PermanentError(f"--selector {selector!r}: {exc}") from None
        log.debug("could not tell whether the OAuthClient CRD is installed: %s", exc)
        return True
    if not served:
        log.warning(
            "the OAuthClient CRD is not installed: idle until it is "
            "(kubectl apply -f crds/oauthclients.oauth-token-operator.dev.yaml)"
        )
    return served


async def _providers_not_served(kube: Kube, namespaces: tuple[str, ...]) -> list[str]:
    """The provider kinds whose CRD is not installed (an install of deploy/crd.yaml alone),
    said once: OAuthClients with an inline issuer work, those naming such a provider say
    ProviderNotFound, until it is installed."""
    missing = []
    for kind in PLURALS:
        try:
            served = await _objects_exist(kube, kind, namespaces[:1])()
        except KubeError as exc:
            log.debug("could not tell whether the %s CRD is installed: %s", kind, exc)
            continue
        if served is None:
            missing.append(kind)
    if missing:
        log.warning(
            "the %s CRD%s not installed: OAuthClients whose spec.providerRef names one say "
            "ProviderNotFound until it is (kubectl apply -f deploy/crd-providers.yaml); "
            "inline issuers and token endpoints are not affected",
            " and ".join(missing),
            "s are" if len(missing) > 1 else " is",
        )
    return missing


def _objects_exist(
    kube: Kube, kind: str, namespaces: tuple[str, ...]
) -> Callable[[], Awaitable[bool | None]]:
    resource = (API_GROUP, API_VERSION, PLURALS[kind])
    scopes: tuple[str | None, ...] = (namespaces or (None,)) if kind == PROVIDER_KIND else (None,)
    return lambda: kube.any_objects(resource, scopes)


async def _start_over_once_served(
    what: str,
    events: Callable[[], int],
    exist: Callable[[], Awaitable[bool | None]],
    start_over: Callable[[], None],
) -> None:
    """While a CRD was missing at start: once objects of it exist and no event about any
    came within a grace period, start kopf over (see _serve_once_installed). Ends when kopf
    brings an event."""
    waiting_since: float | None = None
    while events() == 0:
        await asyncio.sleep(CRD_POLL)
        try:
            found = await exist()
        except KubeError:
            continue
        if not found:
            waiting_since = None
        elif waiting_since is None:
            waiting_since = time.monotonic()
        elif events() == 0 and time.monotonic() - waiting_since > CRD_GRACE:
            log.warning("the %s is installed now but kopf does not serve it: starting over", what)
            start_over()
            return


async def _serve_once_installed(
    kube: Kube, settings: Settings, memo: kopf.Memo, start_over: Callable[[], None]
) -> None:
    """kopf serves a CRD installed after it started by watching CRDs, but when its discovery
    lags the CRD's events it gives up on it ("Unresolved resources cannot be served") and
    never looks again (seen under load). So while the CRD was missing at start, or after it
    was deleted: once OAuthClients exist and no event about any reached us within a grace
    period, start kopf over; its start-up scan then finds the CRD. Ends when kopf brings an
    event."""
    await _start_over_once_served(
        "OAuthClient CRD",
        lambda: int(memo.oauthclient_events),
        lambda: kube.any_oauthclients(settings.namespaces, settings.selector),
        start_over,
    )
    memo.crd_waiter = None


def configure_kopf(settings: kopf.OperatorSettings, selector: str = "") -> None:
    # Only event handlers are registered: kopf keeps no per-object progress or diff-base
    # annotations and adds no finalizers, so it never writes to users' objects.
    # kopf's scanning stays on: it watches CRDs, so that the OAuthClient CRD may be installed
    # after the operator, or deleted and installed again (app/process.py covers the race).
    settings.posting.level = logging.WARNING
    settings.persistence.diffbase_storage = NoDiffBase()
    if selector:
        # Server-side: a shard's watch carries only its OAuthClients. One that stops
        # matching (relabelled to another shard) arrives as DELETED: it is forgotten here
        # and picked up there from its Secret.
        settings.watching.label_selectors[API_GROUP, PLURAL] = selector
    # The start-up LIST in pages, not one answer with every OAuthClient: after a restart at
    # 10,000 clients one answer held ~30 MB of JSON and its parse at once.
    settings.watching.chunk_size = 500
    # kopf keeps a worker per object alive this long after its last event, holding that
    # event's body: at start-up, every OAuthClient's at once (5 s by default).
    settings.queueing.idle_timeout = 0.5
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: only event handlers are registered, and nothing reads one. kopf builds
    one for every event all the same, a deep copy of the object (2 % of the operator's CPU
    at 100 refreshes/s, each of which brings the status patch back as an event)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server's address as kubelet tells every pod, as client-go reads it."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
