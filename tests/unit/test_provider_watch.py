"""ProviderMonitor over fakes: what a provider's events and checks write to its status, and
which of its OAuthClients they run now (Refresher.wake_provider_clients)."""

from __future__ import annotations

import asyncio
import copy
from random import Random
from typing import Any, cast

import pytest

from oauth_token_operator import reasons
from oauth_token_operator.app import handlers
from oauth_token_operator.app.provider_watch import ProviderMonitor
from oauth_token_operator.engine.config import Settings
from oauth_token_operator.engine.refresh import Refresher
from oauth_token_operator.exchange.providers import PLURALS, resolve
from oauth_token_operator.kube.client import Kube
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.oauth.types import (
    CLUSTER_PROVIDER_KIND,
    PROVIDER_KIND,
    Endpoint,
    OAuthError,
    Outcome,
)
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.policy import SINGLE_TENANT
from oauth_token_operator.resource.provider_status import FIRST_SEEN, PROVIDER_FAILURES
from oauth_token_operator.resource.spec import API_GROUP, API_VERSION
from tests.unit.fakes import NS, Clock, FakeKube, FakeTokens, b64
from tests.unit.test_spec import body as client_body

ISSUER = "https://sso.example/realms/apps"
TOKEN = ISSUER + "/token"
HOME = "oauth-system"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
START = 1_700_000_000.0

Wakes = list[tuple[str, str | None, str, frozenset[str] | None]]


class FakeDiscovery:
    """check_provider answers from `answers` by issuer (or token endpoint): a URL or an
    OAuthError."""

    def __init__(self) -> None:
        self.answers: dict[str, str | OAuthError] = {ISSUER: TOKEN}
        self.checked: list[tuple[Endpoint, str | None]] = []
        self.forgotten: list[tuple[str, str | None, str]] = []

    async def check_provider(self, endpoint: Endpoint, ca_pem: str | None) -> str:
        self.checked.append((endpoint, ca_pem))
        where = endpoint.issuer or endpoint.token_endpoint or ""
        answer = self.answers.get(where, where)
        if isinstance(answer, OAuthError):
            raise answer
        return answer

    def forget_provider(self, kind: str, namespace: str | None, name: str) -> None:
        self.forgotten.append((kind, namespace, name))


class FakeStatus:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str | None, str, dict[str, Any]]] = []
        self.error: KubeError | None = None

    async def patch_object_status(
        self,
        resource: tuple[str, str, str],
        namespace: str | None,
        name: str,
        status: dict[str, Any],
    ) -> None:
        assert resource[:2] == (API_GROUP, API_VERSION)
        if self.error is not None:
            raise self.error
        self.patches.append((resource[2], namespace, name, copy.deepcopy(status)))

    def last(self) -> dict[str, Any]:
        return self.patches[-1][3]

    def ready(self) -> dict[str, Any]:
        (condition,) = self.last()["conditions"]
        return dict(condition)


class Setup:
    def __init__(self, namespaces: tuple[str, ...] = ()) -> None:
        self.clock = Clock(START)
        self.kube = FakeKube()
        self.status = FakeStatus()
        self.discovery = FakeDiscovery()
        self.wakes: Wakes = []
        self.released: list[tuple[str, str]] = []
        settings = Settings(namespaces=namespaces, operator_namespace=HOME)
        self.monitor = ProviderMonitor(
            self.status,
            self.kube,
            self.discovery,
            settings,
            self.wake,
            lambda namespace, name: self.released.append((namespace, name)),
            self.clock,
            Random(1),
        )

    def wake(
        self, kind: str, namespace: str | None, name: str, failing: frozenset[str] | None
    ) -> int:
        self.wakes.append((kind, namespace, name, failing))
        return 1

    async def check(self, name: str = "sso", kind: str = CLUSTER_PROVIDER_KIND) -> float | None:
        """The scheduler's work (its loop is not started): what was due is taken."""
        key = (kind, NS if kind == PROVIDER_KIND else "", name)
        self.monitor.scheduler.forget(key)
        return await self.monitor._check(key)


def provider(
    generation: int = 1, uid: str = "uid-sso", status: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": CLUSTER_PROVIDER_KIND,
        "metadata": {"name": "sso", "uid": uid, "generation": generation},
        "spec": {"issuer": ISSUER, "namespaces": ["*"], **spec},
    }
    if status is not None:
        body["status"] = status
    return body


async def test_a_working_provider_is_ready_with_the_discovered_token_endpoint() -> None:
    setup = Setup()
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider())
    assert setup.monitor.scheduler.due_time((CLUSTER_PROVIDER_KIND, "", "sso")) == START
    due = await setup.check()
    assert due is not None and START + 270 <= due <= START + 300
    plural, namespace, name, patch = setup.status.patches[-1]
    assert (plural, namespace, name) == (PLURALS[CLUSTER_PROVIDER_KIND], None, "sso")
    assert patch["tokenEndpoint"] == TOKEN
    assert patch["observedGeneration"] == 1
    ready = setup.status.ready()
    assert (ready["status"], ready["reason"]) == ("True", reasons.DISCOVERY_FETCHED)
    assert setup.discovery.checked == [(Endpoint(issuer=ISSUER, provider="sso"), None)]
    # Seen for the first time: only clients that could not find it run now.
    assert setup.wakes == [(CLUSTER_PROVIDER_KIND, None, "sso", FIRST_SEEN)]


async def test_the_status_is_written_only_when_it_changes() -> None:
    setup = Setup()
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider())
    await setup.check()
    written = setup.status.last()
    setup.clock.now += 300
    await setup.check()
    assert len(setup.status.patches) == 1
    # The event of our own patch (same generation): no news, no check, no client run.
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider(status=written))
    assert setup.monitor.scheduler.due_time((CLUSTER_PROVIDER_KIND, "", "sso")) is None
    assert len(setup.wakes) == 1
    # After a restart, the status found is what a check writes: nothing to write either.
    restarted = Setup()
    restarted.monitor.observe(CLUSTER_PROVIDER_KIND, provider(status=written))
    await restarted.check()
    assert restarted.status.patches == []


@pytest.mark.parametrize(
    ("error", "retry_within"),
    [
        (OAuthError(Outcome.NEEDS_HUMAN, reasons.TLS_VERIFICATION_FAILED, "not trusted"), 10),
        (OAuthError(Outcome.NEEDS_HUMAN, reasons.DISCOVERY_FAILED, "names issuer 'x'"), 10),
        (OAuthError(Outcome.TRANSIENT, reasons.PROVIDER_UNREACHABLE, "refused"), 10),
    ],
)
async def test_a_failing_provider_says_its_clients_reason_and_is_checked_sooner(
    error: OAuthError, retry_within: float
) -> None:
    setup = Setup()
    setup.discovery.answers[ISSUER] = error
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider())
    due = await setup.check()
    assert due is not None and due - START <= retry_within
    ready = setup.status.ready()
    assert (ready["status"], ready["reason"]) == ("False", error.reason)
    assert ready["message"].startswith(error.message)
    assert setup.status.last()["tokenEndpoint"] is None
    second = await setup.check()
    assert second is not None and 10 <= second - START <= 20  # backoff
    setup.discovery.answers[ISSUER] = TOKEN
    setup.clock.now += 20
    await setup.check()
    assert setup.status.ready()["status"] == "True"
    # It works again: the clients failing because of it run now.
    assert setup.wakes[-1] == (CLUSTER_PROVIDER_KIND, None, "sso", PROVIDER_FAILURES)


async def test_an_unusable_provider_is_provider_invalid_and_nothing_is_fetched() -> None:
    setup = Setup()
    body = provider(defaults={"audience": ""})
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, body)
    await setup.check()
    ready = setup.status.ready()
    assert (ready["status"], ready["reason"]) == ("False", reasons.PROVIDER_INVALID)
    assert "spec.defaults.audience must be a non-empty string" in ready["message"]
    assert setup.discovery.checked == []


async def test_a_token_endpoint_provider_is_taken_as_given() -> None:
    setup = Setup()
    body = provider()
    body["spec"] = {"tokenEndpoint": TOKEN, "namespaces": ["*"], "tls": {"caBundle": CA_PEM}}
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, body)
    await setup.check()
    ready = setup.status.ready()
    assert (ready["status"], ready["reason"]) == ("True", reasons.TOKEN_ENDPOINT_CONFIGURED)
    assert "used as given" in ready["message"]
    assert setup.status.last()["tokenEndpoint"] == TOKEN
    assert setup.discovery.checked == [
        (Endpoint(token_endpoint=TOKEN, provider="sso"), CA_PEM)  # policy and CA: its part
    ]


def ca_secret(pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "sso-ca", "namespace": HOME},
        "data": {"ca.crt": b64(pem)},
    }


async def test_the_ca_bundle_secret_is_read_as_clients_read_it_and_followed() -> None:
    setup = Setup()
    setup.monitor.observe(
        CLUSTER_PROVIDER_KIND, provider(tls={"caBundleSecretRef": {"name": "sso-ca"}})
    )
    assert setup.monitor.follows(HOME, "sso-ca")
    await setup.check()
    ready = setup.status.ready()
    assert (ready["status"], ready["reason"]) == ("False", reasons.INVALID_CA_BUNDLE)
    assert f"CA bundle Secret sso-ca (namespace {HOME}) not found" in ready["message"]
    setup.kube.put(HOME, ca_secret(CA_PEM))
    setup.monitor.secret_changed(HOME, "sso-ca")  # the Secret watch, through the Refresher
    assert setup.monitor.scheduler.due_time((CLUSTER_PROVIDER_KIND, "", "sso")) == START
    assert setup.wakes[-1] == (CLUSTER_PROVIDER_KIND, None, "sso", PROVIDER_FAILURES)
    assert setup.discovery.forgotten[-1] == (CLUSTER_PROVIDER_KIND, None, "sso")
    await setup.check()
    assert setup.status.ready()["status"] == "True"
    assert setup.discovery.checked[-1][1] == CA_PEM
    # Another CA Secret: the old one is followed no more.
    setup.monitor.observe(
        CLUSTER_PROVIDER_KIND,
        provider(generation=2, tls={"caBundleSecretRef": {"name": "new-ca"}}),
    )
    assert not setup.monitor.follows(HOME, "sso-ca")
    assert setup.released == [(HOME, "sso-ca")]
    assert setup.monitor.follows(HOME, "new-ca")


def test_a_ca_secret_outside_the_watched_namespaces_is_not_followed() -> None:
    """No Secret watch sees it: the periodic check reads it again instead."""
    setup = Setup(namespaces=("team-a",))
    setup.monitor.observe(
        CLUSTER_PROVIDER_KIND, provider(tls={"caBundleSecretRef": {"name": "sso-ca"}})
    )
    assert not setup.monitor.follows(HOME, "sso-ca")


async def test_a_spec_change_runs_every_client_and_drops_the_discovery_cache() -> None:
    setup = Setup()
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider())
    await setup.check()
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider(generation=2, issuer=ISSUER + "/v2"))
    assert setup.wakes[-1] == (CLUSTER_PROVIDER_KIND, None, "sso", None)
    assert setup.discovery.forgotten[-1] == (CLUSTER_PROVIDER_KIND, None, "sso")
    setup.discovery.answers[ISSUER + "/v2"] = ISSUER + "/v2/token"
    await setup.check()
    assert setup.status.last()["observedGeneration"] == 2
    assert setup.status.last()["tokenEndpoint"] == ISSUER + "/v2/token"
    # Deleted: its clients run now (and say ProviderNotFound); no more checks.
    setup.monitor.forget(CLUSTER_PROVIDER_KIND, None, "sso")
    assert setup.wakes[-1] == (CLUSTER_PROVIDER_KIND, None, "sso", None)
    assert await setup.check() is None


async def test_a_check_overtaken_by_an_edit_writes_nothing() -> None:
    setup = Setup()
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider())

    class Slow(FakeDiscovery):
        async def check_provider(self, endpoint: Endpoint, ca_pem: str | None) -> str:
            setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider(generation=2))
            return await super().check_provider(endpoint, ca_pem)

    setup.monitor.discovery = Slow()
    assert await setup.check() is None  # the check of generation 2 is due instead
    assert setup.status.patches == []


async def test_an_oauthprovider_is_reported_in_its_namespace() -> None:
    setup = Setup()
    body = provider()
    body["kind"] = PROVIDER_KIND
    body["metadata"]["namespace"] = NS
    del body["spec"]["namespaces"]
    setup.monitor.observe(PROVIDER_KIND, body)
    await setup.check(kind=PROVIDER_KIND)
    plural, namespace, name, _ = setup.status.patches[-1]
    assert (plural, namespace, name) == (PLURALS[PROVIDER_KIND], NS, "sso")
    assert setup.wakes == [(PROVIDER_KIND, NS, "sso", FIRST_SEEN)]
    assert setup.discovery.checked[0][0].provider_namespace == NS


async def test_a_status_that_cannot_be_written_is_written_at_the_next_check() -> None:
    setup = Setup()
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider())
    setup.status.error = KubeError(403, "forbidden")
    assert await setup.check() is not None
    setup.status.error = None
    await setup.check()
    assert len(setup.status.patches) == 1
    setup.status.error = KubeError(404, "not found")
    setup.monitor.observe(CLUSTER_PROVIDER_KIND, provider(generation=3))
    assert await setup.check() is None  # gone: its DELETED event follows


# --- which clients a provider's change runs (Refresher.wake_provider_clients) -------------


def by_ref(name: str, namespace: str = NS, kind: str | None = None) -> dict[str, Any]:
    ref = {"name": "sso"} if kind is None else {"kind": kind, "name": "sso"}
    obj = client_body(providerRef=ref)
    del obj["spec"]["issuer"]
    obj["metadata"].update(name=name, namespace=namespace, uid=f"uid-{namespace}-{name}")
    return obj


async def test_a_provider_runs_the_clients_that_name_it_and_forces_the_failing_ones() -> None:
    clock = Clock(START)
    refresher = Refresher(FakeKube(), FakeTokens(clock), Settings(guard=SINGLE_TENANT), clock=clock)
    bodies = [
        by_ref("healthy"),
        by_ref("missing"),
        by_ref("denied"),
        by_ref("own", kind=PROVIDER_KIND),
        by_ref("elsewhere", namespace="other", kind=PROVIDER_KIND),
        client_body(),  # an inline issuer
    ]
    for body in bodies:
        await refresher.observe(body)
    refresher.scheduler.forget_all()
    states = {key.name: state for key, state in refresher.clients.items()}
    states["missing"].failures, states["missing"].failure_reason = 2, reasons.PROVIDER_NOT_FOUND
    states["denied"].failures, states["denied"].failure_reason = 1, reasons.INVALID_CLIENT

    def due() -> set[str]:
        found = {k.name for k in refresher.clients if refresher.scheduler.due_time(k)}
        refresher.scheduler.forget_all()
        return found

    assert refresher.wake_provider_clients(CLUSTER_PROVIDER_KIND, None, "sso", FIRST_SEEN) == 1
    assert due() == {"missing"}
    assert states["missing"].force and not states["healthy"].force
    assert refresher.wake_provider_clients(CLUSTER_PROVIDER_KIND, None, "sso", None) == 3
    assert due() == {"healthy", "missing", "denied"}
    assert states["denied"].force and not states["healthy"].force
    assert refresher.wake_provider_clients(PROVIDER_KIND, NS, "sso", None) == 1
    assert due() == {"own"}
    assert refresher.wake_provider_clients(PROVIDER_KIND, NS, "other", None) == 0


async def test_a_resumed_failing_client_keeps_its_reason_for_the_wake_up() -> None:
    clock = Clock(START)
    refresher = Refresher(FakeKube(), FakeTokens(clock), Settings(guard=SINGLE_TENANT), clock=clock)
    body = by_ref("app")
    body["status"] = {
        "consecutiveFailures": 3,
        "conditions": [{"type": "Ready", "status": "False", "reason": "ProviderNotFound"}],
    }
    await refresher.observe(body)
    refresher.scheduler.forget_all()
    assert refresher.wake_provider_clients(CLUSTER_PROVIDER_KIND, None, "sso", FIRST_SEEN) == 1


class ProviderCRDMissing(FakeKube):
    async def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        raise KubeError(404, "404 page not found", kind_missing=True)


async def test_a_provider_kind_without_its_crd_is_provider_not_found_saying_so() -> None:
    spec = parse(by_ref("app"))
    with pytest.raises(OAuthError, match="the ClusterOAuthProvider CRD is not installed") as e:
        await resolve(ProviderCRDMissing(), spec)
    assert (e.value.reason, e.value.outcome) == (reasons.PROVIDER_NOT_FOUND, Outcome.TRANSIENT)


# --- an install without the provider CRDs (handlers) --------------------------------------


class NoProviderCRDs:
    """Kube.any_objects as the API answers without the provider CRDs (None: not served)."""

    def __init__(self, served: bool = False) -> None:
        self.served = served
        self.lists: list[tuple[tuple[str, str, str], tuple[str | None, ...]]] = []

    async def any_objects(
        self, resource: tuple[str, str, str], namespaces: tuple[str | None, ...]
    ) -> bool | None:
        self.lists.append((resource, namespaces))
        return True if self.served else None


async def test_missing_provider_crds_are_said_once_and_the_operator_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = NoProviderCRDs()
    missing = await handlers._providers_not_served(cast(Kube, kube), ("a", "b"))
    assert missing == [CLUSTER_PROVIDER_KIND, PROVIDER_KIND]
    assert "the ClusterOAuthProvider and OAuthProvider CRDs are not installed" in caplog.text
    assert "kubectl apply -f deploy/crd-providers.yaml" in caplog.text
    # One LIST each: a cluster-wide one, and one in the first watched namespace.
    assert [scopes for _, scopes in kube.lists] == [(None,), ("a",)]
    assert await handlers._providers_not_served(cast(Kube, NoProviderCRDs(True)), ()) == []


async def test_kopf_is_started_over_when_it_does_not_serve_a_crd_installed_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "CRD_POLL", 0.01)
    monkeypatch.setattr(handlers, "CRD_GRACE", 0.05)
    started_over: list[bool] = []
    events = [0]

    async def exist() -> bool | None:
        return True

    waiting = handlers._start_over_once_served(
        "ClusterOAuthProvider CRD", lambda: events[0], exist, lambda: started_over.append(True)
    )
    await asyncio.wait_for(waiting, 5)
    assert started_over == [True]
    events[0] = 1  # kopf brought an event: nothing to do
    await asyncio.wait_for(
        handlers._start_over_once_served(
            "x", lambda: events[0], exist, lambda: started_over.append(True)
        ),
        5,
    )
    assert started_over == [True]
