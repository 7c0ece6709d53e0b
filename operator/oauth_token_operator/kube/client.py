"""Kubernetes I/O: Secret reads and writes, status patches and Events, over one shared
async API client. Objects travel as plain dicts (as kopf hands them over), which keeps
10,000 Secrets cheap to read and the rest of the code free of client model classes."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from kubernetes_asyncio import client, config

from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import SERVICE_ACCOUNT_NAMESPACE
from oauth_token_operator.kube.transport import read_body, read_json, read_or_none
from oauth_token_operator.oauth.proxies import proxy_for
from oauth_token_operator.resource.spec import API_GROUP, API_VERSION, KIND, PLURAL, ObjectKey
from oauth_token_operator.wire import rfc3339

log = logging.getLogger(__name__)


# (group, version, plural) of the custom resources the operator reads and writes.
Resource = tuple[str, str, str]
OAUTHCLIENTS: Resource = (API_GROUP, API_VERSION, PLURAL)


def _look_up_environment_once(api: client.ApiClient, configuration: client.Configuration) -> None:
    """kubernetes_asyncio's session trusts the environment, so aiohttp looks up ~/.netrc and
    the proxy variables in a worker thread on every request: two thread hops per API call,
    a quarter of the operator's CPU in bench_convergence's profile. The API server's address
    does not change: honour HTTPS_PROXY/NO_PROXY once, here (as client-go does), and stop the
    per-request lookups. netrc has no place here: the operator brings its own credentials."""
    rest = api.rest_client
    if rest.proxy is None:
        proxy, headers = proxy_for(configuration.host)
        if proxy is not None:
            rest.proxy = proxy
            if headers:
                rest.proxy_headers = {**(rest.proxy_headers or {}), **headers}
    # No public setter; aiohttp lists _trust_env among the attributes it lets callers set.
    rest.pool_manager._trust_env = False


def _peerings(namespace: str | None) -> Resource:
    """kopf's peering resource: cluster-wide, or one per namespace."""
    return ("kopf.dev", "v1", "clusterkopfpeerings" if namespace is None else "kopfpeerings")


def default_namespace(kubeconfig: str | None = None) -> str:
    """The namespace kubectl would use: the pod's own in a cluster, else the kubeconfig's
    current context's, else "default"."""
    with contextlib.suppress(OSError), open(SERVICE_ACCOUNT_NAMESPACE) as file:
        return file.read().strip() or "default"
    try:
        _, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return "default"  # connecting will say what is wrong with the kubeconfig
    namespace = (current or {}).get("context", {}).get("namespace")
    return str(namespace or "default")


class Kube:
    """The operator's Kubernetes API calls. One instance, one connection pool."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        # Typed as Any: bodies go in and out as dicts with _preload_content=False, which the
        # client's model-class signatures do not describe.
        self._core: Any = client.CoreV1Api(api)
        self._custom: Any = client.CustomObjectsApi(api)
        self._apps: Any = client.AppsV1Api(api)
        self._authn: Any = client.AuthenticationV1Api(api)
        self._well_known: Any = client.WellKnownApi(api)

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, connections: int = 100) -> Kube:
        """In-cluster service account when present, else the kubeconfig (KUBECONFIG).
        `connections`: the most open at once (0: no limit)."""
        configuration = client.Configuration()
        configuration.connection_pool_maxsize = connections
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        api = client.ApiClient(configuration)
        _look_up_environment_once(api, configuration)
        return cls(api)

    @property
    def api_client(self) -> client.ApiClient:
        """For secret_lists, whose requests need an Accept header of their own."""
        return self._api

    async def close(self) -> None:
        await self._api.close()

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_or_none(self._core.read_namespaced_secret, namespace, name)

    async def namespace_labels(self, name: str) -> dict[str, str]:
        try:
            body: dict[str, Any] = await read_json(
                self._core.read_namespace(name, _preload_content=False)
            )
        except KubeError as exc:
            if exc.not_found:
                return {}
            raise
        return dict((body.get("metadata") or {}).get("labels") or {})

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_or_none(self._core.read_namespaced_config_map, namespace, name)

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_or_none(self._core.read_namespaced_service_account, namespace, name)

    async def create_service_account_token(
        self, namespace: str, name: str, audience: str, expiration_seconds: int
    ) -> str:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": expiration_seconds},
        }
        body = await read_json(
            self._core.create_namespaced_service_account_token(
                name, namespace, request, _preload_content=False
            )
        )
        return str((body.get("status") or {}).get("token") or "")

    async def apiserver_accepts(self, token: str) -> bool:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},  # no audiences: the apiserver's own
        }
        body = await read_json(self._authn.create_token_review(review, _preload_content=False))
        return bool((body.get("status") or {}).get("authenticated"))

    async def service_account_issuer(self) -> str | None:
        try:
            body = await read_json(
                self._well_known.get_service_account_issuer_open_id_configuration(
                    _preload_content=False
                )
            )
        except KubeError:
            return None
        issuer = body.get("issuer")
        return issuer if isinstance(issuer, str) else None

    def _workload_call(self, verb: str, kind: str) -> Any:
        plural = {"Deployment": "deployment", "StatefulSet": "stateful_set"}
        return getattr(self._apps, f"{verb}_namespaced_{plural.get(kind, 'daemon_set')}")

    async def get_pod_template_annotations(
        self, namespace: str, kind: str, name: str
    ) -> dict[str, str] | None:
        body = await read_or_none(self._workload_call("read", kind), namespace, name)
        if body is None:
            return None
        template = (body.get("spec") or {}).get("template") or {}
        return dict((template.get("metadata") or {}).get("annotations") or {})

    async def get_workload_annotations(
        self, namespace: str, kind: str, name: str
    ) -> dict[str, str] | None:
        body = await read_or_none(self._workload_call("read", kind), namespace, name)
        return None if body is None else dict((body.get("metadata") or {}).get("annotations") or {})

    async def patch_pod_template_annotations(
        self, namespace: str, kind: str, name: str, annotations: dict[str, str]
    ) -> bool:
        patch = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
        call = self._workload_call("patch", kind)
        try:
            await read_json(
                call(
                    name,
                    namespace,
                    patch,
                    _preload_content=False,
                    _content_type="application/merge-patch+json",
                )
            )
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    async def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = await read_json(
                self._custom_object("get", (group, version, plural), namespace, name)
            )
        except KubeError as exc:
            if exc.not_found and not exc.kind_missing:
                return None
            raise
        return body

    def _custom_object(
        self, verb: str, resource: Resource, namespace: str | None, *args: Any, **kwargs: Any
    ) -> Any:
        """CustomObjectsApi's <verb>_cluster_custom_object call (namespace None) or its
        <verb>_namespaced_custom_object twin, answering raw JSON for read_json()."""
        group, version, plural = resource
        if namespace is None:
            method = getattr(self._custom, f"{verb}_cluster_custom_object")
            return method(group, version, plural, *args, _preload_content=False, **kwargs)
        method = getattr(self._custom, f"{verb}_namespaced_custom_object")
        return method(group, version, namespace, plural, *args, _preload_content=False, **kwargs)

    async def list_oauthclients(
        self, namespaces: tuple[str, ...], selector: str = ""
    ) -> list[dict[str, Any]]:
        """Every OAuthClient in these namespaces (empty: all) that the label selector
        matches, read in pages of 500; none while the CRD is not installed."""
        items: list[dict[str, Any]] = []
        for namespace in namespaces or (None,):
            token = None
            while True:
                page = await self._page(OAUTHCLIENTS, namespace, selector, 500, token)
                if page is None:
                    return []
                items.extend(page.get("items") or ())
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return items

    async def any_oauthclients(self, namespaces: tuple[str, ...], selector: str = "") -> bool:
        """Whether one OAuthClient at least exists there (one-item pages, not a full list)."""
        for namespace in namespaces or (None,):
            page = await self._page(OAUTHCLIENTS, namespace, selector, 1)
            if page is not None and page.get("items"):
                return True
        return False

    async def any_objects(
        self, resource: Resource, namespaces: tuple[str | None, ...]
    ) -> bool | None:
        """Whether one object of a kind at least exists in these namespaces (None: all, or
        a cluster-scoped kind), in one-item pages; None while its CRD is not installed."""
        for namespace in namespaces:
            page = await self._page(resource, namespace, "", 1)
            if page is None:
                return None
            if page.get("items"):
                return True
        return False

    async def oauthclients_served(self, namespaces: tuple[str, ...], selector: str = "") -> bool:
        """Whether the API serves OAuthClients, i.e. the CRD is installed. A selector the
        API server cannot parse raises (HTTP 400)."""
        page = await self._page(OAUTHCLIENTS, (*namespaces, None)[0], selector, 1)
        return page is not None

    async def _page(
        self,
        resource: Resource,
        namespace: str | None,
        selector: str,
        limit: int,
        token: str | None = None,
    ) -> dict[str, Any] | None:
        """One page of a LIST (OAuthClients, ...); None while the CRD is not installed."""
        more: dict[str, str] = {}
        if token:
            more["_continue"] = token
        if selector:
            more["label_selector"] = selector
        try:
            page: dict[str, Any] = await read_json(
                self._custom_object("list", resource, namespace, limit=limit, **more)
            )
        except KubeError as exc:
            if exc.kind_missing:
                return None
            raise
        return page

    async def ensure_peerings(self, name: str, namespaces: tuple[str, ...]) -> None:
        """Creates kopf's peering objects of this name where they are missing (namespaces
        empty: the ClusterKopfPeering; else a KopfPeering in each). Never replaces one: its
        status holds every replica's heartbeat and priority."""
        for namespace in namespaces or (None,):
            kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
            body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": name}}
            try:
                await read_json(
                    self._custom_object("create", _peerings(namespace), namespace, body)
                )
                log.info("created the kopf peering %s in %s", name, namespace or "the cluster")
            except KubeError as exc:
                if exc.status == 403:  # an older Role: kopf waits for the object instead
                    log.warning("may not create the kopf peering %s (%s)", name, exc)
                elif not exc.conflict:
                    raise

    async def get_peerings(self, name: str, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """kopf's peering objects of this name: the ClusterKopfPeering (namespaces empty)
        or the KopfPeering in each namespace; missing ones are left out."""
        bodies = []
        for namespace in namespaces or (None,):
            try:
                bodies.append(
                    await read_json(
                        self._custom_object("get", _peerings(namespace), namespace, name)
                    )
                )
            except KubeError as exc:
                if not exc.not_found:
                    raise
        return bodies

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await read_json(
            self._core.create_namespaced_secret(namespace, body, _preload_content=False)
        )
        return created

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replaces with the body's resourceVersion as precondition (409 when stale)."""
        name = body["metadata"]["name"]
        replaced: dict[str, Any] = await read_json(
            self._core.replace_namespaced_secret(name, namespace, body, _preload_content=False)
        )
        return replaced

    async def upsert_secret_data(
        self, namespace: str, name: str, data: dict[str, str], dry_run: bool = False
    ) -> None:
        """Creates the Secret or merges these (base64) data keys into it. dry_run: the API
        server checks the write (RBAC, admission) and stores nothing."""
        body = {"metadata": {"name": name, "namespace": namespace}, "data": data}
        options: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        try:
            await read_json(
                self._core.create_namespaced_secret(
                    namespace, body, _preload_content=False, **options
                )
            )
        except KubeError as exc:
            if exc.status != 409:
                raise
            await read_json(
                self._core.patch_namespaced_secret(
                    name, namespace, {"data": data}, _preload_content=False, **options
                )
            )

    async def patch_status(self, key: ObjectKey, status: dict[str, Any]) -> None:
        # The patched object comes back; nobody reads it, so it is not parsed.
        await read_body(
            self._custom.patch_namespaced_custom_object_status(
                API_GROUP,
                API_VERSION,
                key.namespace,
                PLURAL,
                key.name,
                {"status": status},
                _preload_content=False,
                _content_type="application/merge-patch+json",
            )
        )

    async def patch_object_status(
        self, resource: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> None:
        """A merge patch of a custom object's status (a provider's); namespace None:
        cluster-scoped."""
        group, version, plural = resource
        body = {"status": status}
        merge = {"_preload_content": False, "_content_type": "application/merge-patch+json"}
        if namespace is None:
            call = self._custom.patch_cluster_custom_object_status(
                group, version, plural, name, body, **merge
            )
        else:
            call = self._custom.patch_namespaced_custom_object_status(
                group, version, namespace, plural, name, body, **merge
            )
        await read_body(call)

    async def post_event(
        self, key: ObjectKey, uid: str, type_: str, reason: str, message: str
    ) -> None:
        """Records a core/v1 Event on the OAuthClient; a failure is logged, not raised:
        Events are a courtesy and must not stop a refresh."""
        now = rfc3339(time.time())
        body = {
            "metadata": {"generateName": f"{key.name}.", "namespace": key.namespace},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": key.name,
                "namespace": key.namespace,
                "uid": uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "oauth-token-operator"},
            "reportingComponent": "oauth-token-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await read_json(
                self._core.create_namespaced_event(key.namespace, body, _preload_content=False)
            )
        except KubeError as exc:
            log.warning("could not record event %s on %s: %s", reason, key, exc)
