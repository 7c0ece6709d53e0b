"""Shared clusters on the node: the chart, installed by helm with its default tenancy
(shared), brings the CRDs, its RBAC and a ValidatingAdmissionPolicy, and the apiserver
refuses a tenant's OAuthClient that names an endpoint the platform does not trust.

The functional release runs with tenancy single (the node's clients use inline endpoints),
so the policy comes from a second release of the chart with its defaults, trustedEndpoints
set and no replicas: the policy is the apiserver's work, and a second operator pod would
handle the same clients as the first. It is uninstalled at the end, and the test waits for
the apiserver to drop the policy so that later tests' clients are not refused."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import OPERATOR_NS, Release, helm
from tests.paths import CHART
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TENANT = "tenant"
SHARED = "shared"  # the second release
POLICY = f"{SHARED}-oauth-token-operator-trusted-endpoints"
TRUSTED = "https://127.0.0.1:9/realms/apps"  # loopback; nothing is sent there
UNTRUSTED = "https://127.0.0.1:9/tenant/token"
CRDS = ("oauthclients.oauth-token-operator.dev", "clusteroauthproviders.oauth-token-operator.dev")


def client(name: str, **endpoint: Any) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            **endpoint,
            "clientAuthentication": "client_secret_post",
            "credentialsSecretRef": {"name": "creds"},
        },
    }


class Tenant:
    """The apiserver as the tenant sees it: the admin's client certificate impersonating
    a user with no group of its own, over the apiserver's loopback address."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        pki = cp.pki_dir
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        self.http = httpx.Client(
            base_url=cp.server, verify=context, headers={"Impersonate-User": TENANT}
        )
        self.path = f"/apis/oauth-token-operator.dev/v1alpha1/namespaces/{namespace}/oauthclients"

    def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> httpx.Response:
        params = {"dryRun": "All"} if dry_run else {}
        return self.http.post(self.path, params=params, content=json.dumps(obj))

    def untrusted_admitted(self) -> bool:
        """Whether the apiserver would store a client with the untrusted endpoint (server
        dry run: nothing is stored)."""
        answer = self.create(client("probe", tokenEndpoint=UNTRUSTED), dry_run=True)
        assert answer.status_code in (201, 403), answer.text
        return answer.status_code == 201


@pytest.fixture
def tenant(release: Release, app_ns: Cluster) -> Iterator[Tenant]:
    """A user who may do anything with OAuthClients in the namespace, and nothing else:
    no Secret read, no pod create, no TokenRequest."""
    ns = app_ns.namespace
    app_ns.kubectl(
        "create", "role", "oauthclients-only", "-n", ns, "--verb=*",
        "--resource=oauthclients.oauth-token-operator.dev",
    )  # fmt: skip
    app_ns.kubectl(
        "create", "rolebinding", TENANT, "-n", ns, "--role=oauthclients-only", f"--user={TENANT}"
    )  # fmt: skip
    for verb, resource, allowed in (
        ("create", "oauthclients.oauth-token-operator.dev", "yes"),
        ("get", "secrets", "no"),
        ("create", "pods", "no"),
        ("create", "serviceaccounts/token", "no"),
    ):
        answer = app_ns.kubectl(
            "auth", "can-i", verb, resource, "-n", ns, f"--as={TENANT}", check=False
        )
        assert answer.stdout.strip() == allowed, (verb, resource)
    seen = Tenant(release.cp, ns)
    with seen.http:
        yield seen


def can_i(cp: ControlPlane, account: str, verb: str, resource: str, *extra: str) -> bool:
    answer = cp.kubectl("auth", "can-i", verb, resource, f"--as={account}", *extra, check=False)
    assert answer.returncode in (0, 1), answer.stderr
    return bool(answer.returncode == 0)


def test_the_chart_installs_crds_rbac_and_a_policy_the_apiserver_enforces_on_tenants(
    release: Release, app_ns: Cluster, tenant: Tenant
) -> None:
    cp = release.cp
    started = time.monotonic()

    # The CRDs come from the chart's crds/, created by helm's install of the release.
    for name in CRDS:
        crd = json.loads(
            cp.kubectl("get", "crd", name, "-o", "json", "--show-managed-fields").stdout
        )
        established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
        assert [c["status"] for c in established] == ["True"], name
        managers = {entry["manager"] for entry in crd["metadata"]["managedFields"]}
        assert "helm" in managers, (name, managers)

    # Without the policy the CRD takes the tenant's endpoint: what follows is the policy's.
    assert tenant.untrusted_admitted()

    helm(
        cp, "install", SHARED, str(CHART), "-n", OPERATOR_NS,
        "--set", "replicas=0", "--set", f"trustedEndpoints={{{TRUSTED}}}",
    )  # fmt: skip
    try:
        installed = time.monotonic()
        # Its RBAC: the release's ServiceAccount may watch OAuthClients everywhere and
        # report status, not write their spec; editors gain OAuthClients by aggregation.
        account = f"system:serviceaccount:{OPERATOR_NS}:{SHARED}-oauth-token-operator"
        for kind in ("serviceaccount", "clusterrole", "clusterrolebinding"):
            namespace = ["-n", OPERATOR_NS] if kind == "serviceaccount" else []
            cp.kubectl("get", kind, f"{SHARED}-oauth-token-operator", *namespace)
        for role in ("edit", "view"):
            cp.kubectl("get", "clusterrole", f"{SHARED}-oauth-token-operator-{role}")
        oauthclients = "oauthclients.oauth-token-operator.dev"
        assert can_i(cp, account, "watch", oauthclients, "--all-namespaces")
        assert can_i(cp, account, "patch", oauthclients, "--subresource=status", "-A")
        assert not can_i(cp, account, "update", oauthclients, "-A")
        # The ValidatingAdmissionPolicy and its binding, denying.
        policy = json.loads(
            cp.kubectl("get", "validatingadmissionpolicy", POLICY, "-o", "json").stdout
        )
        assert policy["spec"]["failurePolicy"] == "Fail"
        binding = json.loads(
            cp.kubectl("get", "validatingadmissionpolicybinding", POLICY, "-o", "json").stdout
        )
        assert binding["spec"]["policyName"] == POLICY
        assert binding["spec"]["validationActions"] == ["Deny"]

        # The apiserver picks the new policy up within moments.
        eventually(
            lambda: not tenant.untrusted_admitted(),
            timeout=30,
            interval=0.2,
            what="the chart's admission policy in force",
        )
        in_force = time.monotonic()

        refused = tenant.create(client("own", tokenEndpoint=UNTRUSTED))
        assert refused.status_code == 403, refused.text
        status = refused.json()
        assert status["kind"] == "Status" and status["reason"] == "Forbidden", status
        message = status["message"]
        assert f"ValidatingAdmissionPolicy '{POLICY}'" in message, message
        assert (
            f"spec.issuer/spec.tokenEndpoint {UNTRUSTED} is not an endpoint this cluster "
            "trusts" in message
        ), message
        assert f"trustedEndpoints: {TRUSTED})" in message, message
        assert app_ns.get("oauthclient", "own") is None  # nothing stored

        # The same tenant, an endpoint the platform listed or the platform's provider.
        for admitted in (
            client("trusted", tokenEndpoint=TRUSTED),
            client("by-provider", providerRef={"kind": "ClusterOAuthProvider", "name": "sso"}),
        ):
            answer = tenant.create(admitted)
            assert answer.status_code == 201, answer.text
            assert app_ns.get("oauthclient", admitted["metadata"]["name"]) is not None
    finally:
        helm(cp, "uninstall", SHARED, "-n", OPERATOR_NS, "--wait", check=False)
        # Later tests' clients name their own provider: the policy must be gone.
        eventually(
            tenant.untrusted_admitted,
            timeout=30,
            interval=0.2,
            what="the policy dropped after helm uninstall",
        )
    print(
        f"\nchart policy: in force {in_force - installed:.1f} s after helm install; "
        f"the test took {time.monotonic() - started:.1f} s"
    )
