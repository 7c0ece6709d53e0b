"""What the domain needs from the outside world, as Protocols: the Kubernetes calls and the
token client. `kube.Kube` and `oauth.TokenClient` implement them; test fakes are checked
against them by mypy instead of being cast."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from oauth_token_operator.oauth.types import Credentials, Endpoint, Token, TokenRequest
from oauth_token_operator.resource.spec import ObjectKey

# Where a pod finds its own namespace (the ServiceAccount's mount).
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class SecretAPI(Protocol):
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replaces with the body's resourceVersion as precondition (KubeError 409 if stale)."""
        ...


class SecretWatchAPI(Protocol):
    async def list_secrets(
        self,
        namespace: str | None,
        limit: int,
        token: str | None = None,
        selector: str = "",
        metadata_only: bool = False,
    ) -> dict[str, Any]:
        """One page of a LIST (namespace None: all namespaces)."""
        ...

    def watch_secrets(
        self,
        namespace: str | None,
        resource_version: str,
        server_timeout: int,
        selector: str = "",
        metadata_only: bool = False,
        batch: float = 0.0,
    ) -> AsyncIterator[dict[str, Any]]: ...


class ConfigMapAPI(Protocol):
    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class WorkloadAPI(Protocol):
    """Deployments, StatefulSets and DaemonSets (kind), by their pod template."""

    async def get_pod_template_annotations(
        self, namespace: str, kind: str, name: str
    ) -> dict[str, str] | None: ...

    async def get_workload_annotations(
        self, namespace: str, kind: str, name: str
    ) -> dict[str, str] | None:
        """The workload's own annotations (its owner's opt-ins); None: it does not exist."""
        ...

    async def patch_pod_template_annotations(
        self, namespace: str, kind: str, name: str, annotations: dict[str, str]
    ) -> bool:
        """False: the workload does not exist."""
        ...


class ProviderAPI(Protocol):
    """Custom objects (namespace None: cluster-scoped), e.g. ClusterOAuthProviders, and the
    labels of namespaces (a provider's namespaceSelector)."""

    async def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """The namespace's labels; empty if it does not exist."""
        ...


class ProviderStatusAPI(Protocol):
    async def patch_object_status(
        self,
        resource: tuple[str, str, str],
        namespace: str | None,
        name: str,
        status: dict[str, Any],
    ) -> None:
        """A merge patch of a custom object's status; resource is (group, version, plural)."""
        ...


class DiscoveryAPI(Protocol):
    """What a provider's status needs of the token client (oauth.TokenClient)."""

    async def check_provider(self, endpoint: Endpoint, ca_pem: str | None) -> str: ...

    def forget_provider(self, kind: str, namespace: str | None, name: str) -> None: ...


class ServiceAccountAPI(Protocol):
    """ServiceAccounts and their tokens (TokenRequest, TokenReview)."""

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_service_account_token(
        self, namespace: str, name: str, audience: str, expiration_seconds: int
    ) -> str:
        """KubeError 404 if the ServiceAccount does not exist."""
        ...

    async def apiserver_accepts(self, token: str) -> bool:
        """Whether the kube-apiserver itself authenticates the token (its own audiences)."""
        ...

    async def service_account_issuer(self) -> str | None:
        """The issuer of ServiceAccount tokens (OIDC discovery); None if not readable."""
        ...


class StatusAPI(Protocol):
    async def patch_status(self, key: ObjectKey, status: dict[str, Any]) -> None: ...

    async def post_event(
        self, key: ObjectKey, uid: str, type_: str, reason: str, message: str
    ) -> None: ...


class KubeAPI(
    SecretAPI, ConfigMapAPI, WorkloadAPI, ServiceAccountAPI, StatusAPI, ProviderAPI, Protocol
):
    """Everything a run of the operator calls."""


class TokenAPI(Protocol):
    async def exchange(
        self,
        request: TokenRequest,
        creds: Credentials,
        default_lifetime: float,
        ca_pem: str | None = None,
    ) -> Token: ...
