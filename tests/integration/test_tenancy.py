"""The trust boundary between tenants (README "Threat model"), against the real apiserver:
a tenant is a user bound to a Role with rights on oauthclients only (no Secret read, no pod
create, no TokenRequest), acting through impersonation; the operator runs under the chart's
RBAC with its default tenancy (shared). The tenant's own endpoint is a loopback server that
must receive nothing; the status, or admission, says why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_chart import install
from tests.integration.test_keyless import tokens_minted
from tests.integration.test_operator import oauth_client
from tests.integration.test_rbac import under_chart_rbac
from tests.integration.test_rollout import deployment
from tests.support.attacker import Attacker
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess
from tests.support.pki import TestCA

pytestmark = pytest.mark.integration

TENANT = "tenant"


@pytest.fixture
def tenant(cluster: Cluster) -> str:
    """A user who may do anything with OAuthClients in the test's namespace, and nothing
    else: the Role a self-service platform or a GitOps setup hands out."""
    ns = cluster.namespace
    cluster.kubectl(
        "create", "role", "oauthclients-only", "-n", ns, "--verb=*",
        "--resource=oauthclients.oauth-token-operator.dev",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "tenant", "-n", ns, "--role=oauthclients-only", f"--user={TENANT}"
    )  # fmt: skip
    for verb, resource in (
        ("get", "secrets"),
        ("create", "pods"),
        ("create", "serviceaccounts/token"),
    ):
        answer = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", ns, f"--as={TENANT}", check=False
        )
        assert answer.stdout.strip() == "no", (verb, resource)
    return TENANT


def as_tenant(cluster: Cluster, obj: dict[str, Any]) -> Any:
    obj.setdefault("metadata", {})["namespace"] = cluster.namespace
    return cluster.kubectl("apply", f"--as={TENANT}", "-f", "-", input=json.dumps(obj), check=False)


def resource_version(cluster: Cluster, secret: str) -> str:
    """Only the version: a Secret's body must not reach the test's output."""
    path = "jsonpath={.metadata.resourceVersion}"
    got = cluster.kubectl("get", "secret", secret, "-n", cluster.namespace, "-o", path)
    return str(got.stdout)


def client(name: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "tokenEndpoint": endpoint,
            "clientAuthentication": "client_secret_post",
            "credentialsSecretRef": {"name": "creds"},
            **spec,
        },
    }


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            {"type": "kubernetes.io/service-account-token"},
            "spec.secret.type kubernetes.io/service-account-token and "
            "bootstrap.kubernetes.io/token are refused",
        ),
        (
            {"type": "bootstrap.kubernetes.io/token"},
            "spec.secret.type kubernetes.io/service-account-token and "
            "bootstrap.kubernetes.io/token are refused",
        ),
        (
            {"annotations": {"kubernetes.io/service-account.name": "billing"}},
            "spec.secret.annotations: keys starting kubernetes.io/service-account. are refused",
        ),
        (
            {"labels": {"kubernetes.io/service-account.name": "billing"}},
            "spec.secret.labels: keys starting kubernetes.io/service-account. are refused",
        ),
    ],
)
def test_admission_refuses_output_secrets_that_kubernetes_fills_with_credentials(
    cluster: Cluster, tenant: str, output: dict[str, Any], message: str
) -> None:
    result = as_tenant(cluster, client("mint", "https://127.0.0.1:9/token", secret=output))
    assert result.returncode != 0, "admitted"
    assert message in result.stderr
    assert cluster.get("oauthclient", "mint") is None
    # What is harmless still passes, for the same tenant.
    fine = {"type": "Opaque", "annotations": {"example.com/service-account.name": "x"}}
    assert (
        as_tenant(cluster, client("fine", "https://127.0.0.1:9/token", secret=fine)).returncode == 0
    )


AUDIENCE = "https://sso.example/realms/apps"
AUDIENCES_ANNOTATION = "oauth-token-operator.dev/token-audiences"
ENDPOINTS_ANNOTATION = "oauth-token-operator.dev/token-endpoints"
ALLOWED_CLIENTS = "oauth-token-operator.dev/allowed-clients"


@pytest.fixture
def billing(cluster: Cluster, identity_provider: IdentityProvider) -> str:
    """Another team's ServiceAccount, opted in to tokens for its provider (audience and,
    as shared tenancy asks, the issuer they go to)."""
    annotations = {AUDIENCES_ANNOTATION: AUDIENCE, ENDPOINTS_ANNOTATION: identity_provider.issuer}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "billing", "annotations": annotations},
        }
    )
    return "billing"


@pytest.fixture
def attacker(test_ca: TestCA) -> Iterator[Attacker]:
    with Attacker(test_ca) as server:
        yield server


def shared_operator(
    cluster: Cluster, tmp_path: Path, *trusted: str
) -> tuple[OperatorProcess, list[dict[str, Any]]]:
    """The operator as the chart's ServiceAccount (ServiceAccount tokens enabled), with the
    default tenancy; `trusted`: the platform's --trusted-endpoints, given through the
    environment so that an operator without tenancy runs the same test (and leaks)."""
    kubeconfig, rbac = under_chart_rbac(cluster, "otot", "tn", "serviceAccountTokens.enabled=true")
    env = {"OAUTH_TOKEN_OPERATOR_TRUSTED_ENDPOINTS": ",".join(trusted)}
    process = OperatorProcess(
        kubeconfig, cluster.namespace, tmp_path / "op.log", tenancy=None, env=env
    )
    return process, rbac


def keyless(name: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    obj = client(name, endpoint, **spec)
    del obj["spec"]["credentialsSecretRef"]
    obj["spec"]["clientId"] = "tenant-chosen"
    return obj


ACCOUNT = {"serviceAccountName": "billing", "audience": AUDIENCE}


def sa_clients(endpoint: str, cluster: Cluster) -> list[str]:
    """billing's token as the client assertion, and as the subject token of an exchange."""
    assertion = keyless(
        "assertion", endpoint, clientAuthentication="service_account_token",
        serviceAccountToken=ACCOUNT,
    )  # fmt: skip
    subject = client(
        "subject", endpoint, credentialsSecretRef={"name": "tenant-own"},
        grantType="token_exchange",
        tokenExchange={"subjectToken": {"serviceAccountToken": ACCOUNT}},
    )  # fmt: skip
    for obj in (assertion, subject):
        assert as_tenant(cluster, obj).returncode == 0
    return ["assertion", "subject"]


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted-endpoint", "trusted-endpoint"])
def test_a_tenant_gets_no_service_account_token_sent_to_its_endpoint(
    cluster: Cluster,
    control_plane: ControlPlane,
    tenant: str,
    billing: str,
    attacker: Attacker,
    tmp_path: Path,
    trusted: bool,
) -> None:
    """billing opted in for its provider; the tenant names billing and its own endpoint.
    Untrusted: the platform never listed that endpoint (EndpointNotTrusted). Trusted: the
    platform trusts it, but billing did not name it (ServiceAccountNotOptedIn)."""
    # The tenant's own client credentials, for the token exchange (opted in by its owner).
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tenant-own", "annotations": {ALLOWED_CLIENTS: "*"}},
            "stringData": {"client_id": "t", "client_secret": "t"},
        }
    )
    endpoint = f"{attacker.url}/token"
    operator, rbac = shared_operator(cluster, tmp_path, *([endpoint] if trusted else []))
    minted = tokens_minted(control_plane)
    try:
        with operator:
            names = sa_clients(endpoint, cluster)
            for name in names:
                ready = cluster.wait_not_ready(name)
                expected = "ServiceAccountNotOptedIn" if trusted else "EndpointNotTrusted"
                assert ready["reason"] == expected, ready
                assert (ENDPOINTS_ANNOTATION if trusted else "trusted endpoints") in ready[
                    "message"
                ]
            logs = operator.logs()
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)
    assert attacker.posts() == []
    assert tokens_minted(control_plane) == minted
    assert "eyJ" not in logs


@pytest.mark.parametrize("use", ["client-secret", "subject-token"])
def test_a_tenant_gets_no_secret_of_the_namespace_sent_to_its_endpoint(
    cluster: Cluster, tenant: str, attacker: Attacker, tmp_path: Path, use: str
) -> None:
    """The database password (a Secret the tenant may not read, that never opted in) named
    as a client secret or as a subject token, towards an endpoint the platform trusts."""
    cluster.create_secret("db", {"username": "app", "password": "hunter2-db-password"})
    version = resource_version(cluster, "db")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tenant-own", "annotations": {ALLOWED_CLIENTS: "steal"}},
            "stringData": {"client_id": "t", "client_secret": "t"},
        }
    )
    endpoint = f"{attacker.url}/token"
    if use == "client-secret":
        ref = {"name": "db", "clientIdKey": "username", "clientSecretKey": "password"}
        obj = client("steal", endpoint, credentialsSecretRef=ref)
    else:
        subject = {"secretKeyRef": {"name": "db", "key": "password"}}
        obj = client(
            "steal",
            endpoint,
            credentialsSecretRef={"name": "tenant-own"},
            grantType="token_exchange",
            tokenExchange={"subjectToken": subject},
        )
    operator, rbac = shared_operator(cluster, tmp_path, endpoint)
    try:
        with operator:
            assert as_tenant(cluster, obj).returncode == 0
            ready = cluster.wait_not_ready("steal")
            assert ready["reason"] == "SecretNotOptedIn", ready
            what = "the client credentials" if use == "client-secret" else "the subject token"
            assert f"Secret db ({what}) has not opted in" in ready["message"]
            logs = operator.logs()
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)
    assert attacker.posts() == []
    assert resource_version(cluster, "db") == version  # nothing written into it either
    seen = json.dumps(cluster.get("oauthclient", "steal")) + json.dumps(cluster.events("steal"))
    assert "hunter2" not in seen and "hunter2" not in logs


def test_shared_tenancy_works_for_secrets_that_opted_in_and_trusted_issuers(
    cluster: Cluster,
    tenant: str,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    tmp_path: Path,
) -> None:
    """What the platform and the Secret's owner allowed works, for the same tenant; an
    opt-in added later is picked up within seconds."""
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    obj = oauth_client("app", identity_provider.issuer, "creds")
    operator, rbac = shared_operator(cluster, tmp_path, identity_provider.issuer)
    try:
        with operator:
            assert as_tenant(cluster, obj).returncode == 0
            assert cluster.wait_not_ready("app")["reason"] == "SecretNotOptedIn"
            cluster.kubectl(
                "annotate", "secret", "creds", "-n", cluster.namespace, f"{ALLOWED_CLIENTS}=app"
            )
            cluster.wait_ready("app", timeout=30)
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)


def test_the_charts_admission_policy_refuses_untrusted_endpoints(
    cluster: Cluster, control_plane: ControlPlane, tenant: str
) -> None:
    """The chart with its default tenancy installs a ValidatingAdmissionPolicy: the tenant's
    OAuthClient naming its own endpoint is refused by the apiserver, with a message a person
    understands; a trusted endpoint passes; a client stored before keeps being editable."""
    trusted = "https://127.0.0.1:9/realms/apps"
    stored = client("stored", "https://127.0.0.1:9/before")
    assert as_tenant(cluster, stored).returncode == 0  # before the policy
    releases = install(
        control_plane, "vap", "vap-" + cluster.namespace, f"trustedEndpoints={{{trusted}/}}",
        f"watchNamespaces={{{cluster.namespace}}}",
    )  # fmt: skip
    next(releases)
    try:
        own = client("own", "https://127.0.0.1:9/attacker/token")

        def refused() -> str | None:
            result = as_tenant(cluster, own)
            if result.returncode == 0:  # not in force yet: a later apply would be an update
                cluster.kubectl("delete", "oauthclient", "own", "-n", cluster.namespace)
                return None
            return str(result.stderr)

        message = eventually(refused, timeout=30, what="the policy in force")
        assert "ValidatingAdmissionPolicy" in message
        assert (
            "spec.issuer/spec.tokenEndpoint https://127.0.0.1:9/attacker/token is not an "
            "endpoint this cluster trusts" in message
        )
        assert trusted in message and "trustedEndpoints" in message
        assert cluster.get("oauthclient", "own") is None
        assert as_tenant(cluster, client("fine", trusted)).returncode == 0
        by_provider = client("by-provider", trusted)
        del by_provider["spec"]["tokenEndpoint"]
        by_provider["spec"]["providerRef"] = {"name": "sso"}
        assert as_tenant(cluster, by_provider).returncode == 0  # the platform's provider
        assert as_tenant(cluster, client("slash", trusted + "/")).returncode == 0
        stored["metadata"]["labels"] = {"team": "a"}
        assert as_tenant(cluster, stored).returncode == 0  # same endpoint: editable
        moved = client("stored", "https://127.0.0.1:9/elsewhere")
        assert as_tenant(cluster, moved).returncode != 0
    finally:
        next(releases, None)


def test_a_tenant_cannot_restart_a_workload_that_did_not_name_its_client(
    cluster: Cluster, tenant: str, identity_provider: IdentityProvider, idp_ca_secret: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """rolloutTargets patch a workload's pod template: in shared tenancy only a workload
    whose allowed-clients annotation names the client is restarted (chart RBAC with
    rolloutTargets.enabled)."""
    theirs, ours = deployment("payments"), deployment("web")
    ours["metadata"]["annotations"] = {ALLOWED_CLIENTS: "app"}
    cluster.apply(theirs)
    cluster.apply(ours)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "annotations": {ALLOWED_CLIENTS: "app"}},
            "stringData": {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET},
        }
    )
    targets = [{"kind": "Deployment", "name": "payments"}, {"kind": "Deployment", "name": "web"}]
    obj = oauth_client("app", identity_provider.issuer, "creds", rolloutTargets=targets)
    kubeconfig, rbac = under_chart_rbac(
        cluster, "otor", "ro", "serviceAccountTokens.enabled=true", "rolloutTargets.enabled=true"
    )
    env = {"OAUTH_TOKEN_OPERATOR_TRUSTED_ENDPOINTS": identity_provider.issuer}
    operator = OperatorProcess(
        kubeconfig, cluster.namespace, tmp_path / "op.log", tenancy=None, env=env
    )
    try:
        with operator:
            assert as_tenant(cluster, obj).returncode == 0
            cluster.wait_ready("app")

            def template(name: str) -> dict[str, str]:
                found = cluster.get("deployment", name) or {}
                return dict(found["spec"]["template"]["metadata"].get("annotations") or {})

            eventually(lambda: template("web"), timeout=30, what="web restarted")
            refused = eventually(
                lambda: next(
                    (e for e in cluster.events("app") if e["reason"] == "RolloutTargetNotOptedIn"),
                    None,
                ),
                timeout=30,
                what="a RolloutTargetNotOptedIn event",
            )
            assert "Deployment payments is not restarted" in refused["message"]
            assert template("payments") == {}
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)


def provider(name: str, issuer: str, ca: TestCA, *namespaces: str) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "ClusterOAuthProvider",
        "metadata": {"name": name},
        "spec": {
            "issuer": issuer,
            "namespaces": list(namespaces),
            "tls": {"caBundle": ca.cert_pem.decode()},
        },
    }


def by_ref(name: str, provider_name: str) -> dict[str, Any]:
    obj = client(name, "", credentialsSecretRef={"name": "creds"})
    del obj["spec"]["tokenEndpoint"]
    obj["spec"]["clientAuthentication"] = "client_secret_basic"
    obj["spec"]["providerRef"] = {"kind": "ClusterOAuthProvider", "name": provider_name}
    return obj


def test_a_cluster_provider_serves_the_namespaces_it_lists_and_no_other(
    cluster: Cluster,
    control_plane: ControlPlane,
    tenant: str,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    """Shared tenancy with no trusted endpoint at all: a ClusterOAuthProvider the platform
    made is what a tenant's OAuthClient may use, from the namespaces it lists."""
    ns = cluster.namespace
    ours, theirs = f"sso-{ns}", f"elsewhere-{ns}"
    can = cluster.kubectl(
        "auth", "can-i", "create", "clusteroauthproviders", f"--as={TENANT}", check=False
    )
    assert can.stdout.strip() == "no"
    for obj in (
        provider(ours, identity_provider.issuer, test_ca, ns),
        provider(theirs, identity_provider.issuer, test_ca, "some-other-namespace"),
    ):
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(obj))
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "annotations": {ALLOWED_CLIENTS: "*"}},
            "stringData": {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET},
        }
    )
    operator, rbac = shared_operator(cluster, tmp_path)
    try:
        with operator:
            assert as_tenant(cluster, by_ref("app", ours)).returncode == 0
            assert as_tenant(cluster, by_ref("stray", theirs)).returncode == 0
            assert as_tenant(cluster, by_ref("nowhere", f"missing-{ns}")).returncode == 0
            cluster.wait_ready("app")
            stray = cluster.wait_not_ready("stray")
            assert stray["reason"] == "ProviderNotAllowed", stray
            assert f"does not list namespace {ns}" in stray["message"]
            assert cluster.wait_not_ready("nowhere")["reason"] == "ProviderNotFound"
            assert cluster.get("secret", "stray-token") is None
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)
        for name in (ours, theirs):
            control_plane.kubectl("delete", "clusteroauthprovider", name, check=False)
