"""The unit tests' shared fakes, checked by mypy against kube.ports' Protocols: an in-memory
Kubernetes (FakeKube), a fake token endpoint (FakeTokens), a clock, and a World of one
client over them (as kopf's and External Secrets' test fakes live apart from the tests)."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any, cast

from oauth_token_operator.engine.config import Settings
from oauth_token_operator.engine.refresh import Refresher
from oauth_token_operator.kube.errors import UNREACHABLE, KubeError
from oauth_token_operator.oauth.types import Credentials, OAuthError, Token, TokenRequest
from oauth_token_operator.resource.policy import SINGLE_TENANT
from oauth_token_operator.resource.spec import (
    ObjectKey,
)

NS, NAME, UID = "ml", "app", "uid-app-1"
KEY = ObjectKey(NS, NAME)
CREDS_SECRET, OUTPUT_SECRET = "app-creds", "app-token"
START = 1_700_000_000.0
LIFETIME = 3600.0


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def unb64(value: str) -> str:
    return base64.b64decode(value).decode()


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeKube:
    """The Kubernetes calls engine/refresh.py makes, over plain dicts. resourceVersion increases
    on every write; a replace with a stale resourceVersion is a 409."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: dict[ObjectKey, dict[str, Any]] = {}
        self.status_patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []  # type, reason, message
        self.writes: list[tuple[str, str]] = []  # (verb, secret name), successful or not
        self.failing: set[str] = set()  # secret names whose writes answer HTTP 500
        # secret names whose writes that change data answer HTTP 500 (a claim still works)
        self.failing_data: set[str] = set()
        self.failing_reads: set[str] = set()  # secret names whose reads answer HTTP 500
        self.reads: list[str] = []  # secret names read
        self.down = False  # every call fails as an unreachable API server's do
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        # (namespace, kind, name) -> pod template annotations; patches as (kind, name, patch)
        self.workloads: dict[tuple[str, str, str], dict[str, str]] = {}
        self.workload_patches: list[tuple[str, str, dict[str, str]]] = []
        # The workloads' own annotations (their owners' opt-ins), by (namespace, kind, name).
        self.workload_opt_ins: dict[tuple[str, str, str], dict[str, str]] = {}
        # Cluster-scoped custom objects (ClusterOAuthProviders) by (plural, name).
        self.cluster_objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.namespace_reads = 0
        # ServiceAccounts by (namespace, name); tokens minted as (namespace, name, audience)
        self.service_accounts: dict[tuple[str, str], dict[str, Any]] = {}
        self.minted: list[tuple[str, str, str]] = []
        self.apiserver_audiences = {"https://apiserver.example"}  # its issuer among them
        self._rv = 0

    def _check_up(self) -> None:
        if self.down:
            raise KubeError(UNREACHABLE, "the Kubernetes API did not answer (injected)")

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def put(self, namespace: str, body: dict[str, Any]) -> None:
        """Stores a copy; the caller's body gets the new resourceVersion too, as the
        watch event of the write would show it."""
        body.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
        self.secrets[namespace, body["metadata"]["name"]] = copy.deepcopy(body)

    def data(self, name: str) -> dict[str, str]:
        return {k: unb64(v) for k, v in self.secrets[NS, name].get("data", {}).items()}

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(name)
        self._check_up()
        if name in self.failing_reads:
            raise KubeError(500, "injected")
        secret = self.secrets.get((namespace, name))
        return copy.deepcopy(secret) if secret is not None else None

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(f"configmap/{name}")
        body = self.config_maps.get((namespace, name))
        return copy.deepcopy(body) if body is not None else None

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.service_accounts.get((namespace, name)))

    async def create_service_account_token(
        self, namespace: str, name: str, audience: str, expiration_seconds: int
    ) -> str:
        if (namespace, name) not in self.service_accounts:
            raise KubeError(404, f"serviceaccounts {name!r} not found")
        self.minted.append((namespace, name, audience))
        return f"sa-token-{len(self.minted)}|{audience}"

    async def apiserver_accepts(self, token: str) -> bool:
        return token.split("|", 1)[1] in self.apiserver_audiences

    async def service_account_issuer(self) -> str | None:
        return "https://apiserver.example"

    async def get_pod_template_annotations(
        self, namespace: str, kind: str, name: str
    ) -> dict[str, str] | None:
        found = self.workloads.get((namespace, kind, name))
        return dict(found) if found is not None else None

    async def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        key = (plural, name) if namespace is None else (plural, f"{namespace}/{name}")
        found = self.cluster_objects.get(key)
        return copy.deepcopy(found) if found is not None else None

    async def namespace_labels(self, name: str) -> dict[str, str]:
        self.namespace_reads += 1
        return dict(self.namespaces.get(name, {}))

    async def get_workload_annotations(
        self, namespace: str, kind: str, name: str
    ) -> dict[str, str] | None:
        found = self.workload_opt_ins.get((namespace, kind, name))
        if found is None and (namespace, kind, name) not in self.workloads:
            return None
        return dict(found or {})

    async def patch_pod_template_annotations(
        self, namespace: str, kind: str, name: str, annotations: dict[str, str]
    ) -> bool:
        self.workload_patches.append((kind, name, dict(annotations)))
        if (namespace, kind, name) not in self.workloads:
            return False
        self.workloads[namespace, kind, name].update(annotations)
        return True

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.writes.append(("create", name))
        self._check_up()
        if name in self.failing:
            raise KubeError(500, "injected")
        if (namespace, name) in self.secrets:
            raise KubeError(409, "already exists")
        self.put(namespace, body)
        return copy.deepcopy(self.secrets[namespace, name])

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.writes.append(("replace", name))
        self._check_up()
        if name in self.failing:
            raise KubeError(500, "injected")
        current = self.secrets.get((namespace, name))
        if current is None:
            raise KubeError(404, "not found")
        if name in self.failing_data and body.get("data") != current.get("data"):
            raise KubeError(500, "injected")
        rv = body["metadata"].get("resourceVersion")
        if rv is not None and rv != current["metadata"]["resourceVersion"]:
            raise KubeError(409, "conflict")
        self.put(namespace, body)
        return copy.deepcopy(self.secrets[namespace, name])

    async def patch_status(self, key: ObjectKey, status: dict[str, Any]) -> None:
        self._check_up()
        self.status_patches.append(copy.deepcopy(status))
        self.statuses.setdefault(key, {}).update(copy.deepcopy(status))

    async def post_event(
        self, key: ObjectKey, uid: str, type_: str, reason: str, message: str
    ) -> None:
        self.events.append((type_, reason, message))

    def ready(self) -> dict[str, Any]:
        (condition,) = self.statuses[KEY]["conditions"]
        assert condition["type"] == "Ready"
        return cast(dict[str, Any], condition)


Respond = Callable[[Credentials, float], Token | OAuthError]


class FakeTokens:
    """Records every exchange; by default issues a one-hour token and, for a refresh grant,
    rotates the refresh token (r1 -> r2 -> r3 ...)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[Credentials] = []
        self.respond: Respond = self.issue
        self.issued = 0

    def issue(self, creds: Credentials, now: float) -> Token:
        self.issued += 1
        rotated = None
        if creds.refresh_token:
            rotated = f"r{int(creds.refresh_token[1:]) + 1}"
        return Token(
            access_token=f"access-{self.issued}",
            token_type="Bearer",
            issued_at=now,
            expires_at=now + LIFETIME,
            scope="openid",
            refresh_token=rotated,
        )

    async def exchange(
        self,
        request: TokenRequest,
        creds: Credentials,
        default_lifetime: float,
        ca_pem: str | None = None,
    ) -> Token:
        self.calls.append(creds)
        result = self.respond(creds, self.clock())
        if isinstance(result, OAuthError):
            raise result
        return result

    @property
    def refresh_tokens_sent(self) -> list[str | None]:
        return [c.refresh_token for c in self.calls]


def client_body(grant: str = "client_credentials", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": {
            "tokenEndpoint": "https://idp.example.com/token",
            "grantType": grant,
            "clientAuthentication": "client_secret_post",
            "credentialsSecretRef": {"name": CREDS_SECRET},
            "scopes": ["openid"],
            **spec,
        },
    }
    return body


class World:
    def __init__(self, grant: str = "client_credentials") -> None:
        self.clock = Clock()
        self.kube = FakeKube()
        self.grant = grant
        data = {"client_id": "id-1", "client_secret": "secret-1"}
        if grant == "refresh_token":
            data["refresh_token"] = "r1"
        self.kube.put(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": CREDS_SECRET, "namespace": NS},
                "data": {k: b64(v) for k, v in data.items()},
            },
        )
        self.tokens = FakeTokens(self.clock)
        self.refresher = self.new_refresher()

    def new_refresher(self) -> Refresher:
        return Refresher(
            self.kube,
            self.tokens,
            Settings(guard=SINGLE_TENANT, concurrency=4, propagation_margin=90.0),
            clock=self.clock,
        )

    def body(self, **spec: Any) -> dict[str, Any]:
        body = client_body(self.grant, **spec)
        if KEY in self.kube.statuses:
            body["status"] = copy.deepcopy(self.kube.statuses[KEY])
        return body

    async def start(self) -> float | None:
        await self.refresher.observe(self.body())
        return await self.refresher._run(KEY)
