"""What the domain needs from the outside world, as Protocols: the Kubernetes calls and the
token client. `kube.Kube` and `oauth.TokenClient` implement them; test fakes are checked
against them by mypy instead of being cast."""

from __future__ import annotations

from typing import Any, Protocol

from .oauth import Credentials, Token
from .spec import ObjectKey, TokenRequest


class SecretAPI(Protocol):
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replaces with the body's resourceVersion as precondition (KubeError 409 if stale)."""
        ...


class ConfigMapAPI(Protocol):
    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class WorkloadAPI(Protocol):
    """Deployments, StatefulSets and DaemonSets (kind), by their pod template."""

    async def get_pod_template_annotations(
        self, namespace: str, kind: str, name: str
    ) -> dict[str, str] | None: ...

    async def patch_pod_template_annotations(
        self, namespace: str, kind: str, name: str, annotations: dict[str, str]
    ) -> bool:
        """False: the workload does not exist."""
        ...


class StatusAPI(Protocol):
    async def patch_status(self, key: ObjectKey, status: dict[str, Any]) -> None: ...

    async def post_event(
        self, key: ObjectKey, uid: str, type_: str, reason: str, message: str
    ) -> None: ...


class KubeAPI(SecretAPI, ConfigMapAPI, WorkloadAPI, StatusAPI, Protocol):
    """Everything a run of the operator calls."""


class TokenAPI(Protocol):
    async def exchange(
        self,
        request: TokenRequest,
        creds: Credentials,
        default_lifetime: float,
        ca_pem: str | None = None,
    ) -> Token: ...
