"""Providers as resources against the real apiserver and oidc-provider: one
ClusterOAuthProvider serving the namespaces it lists or selects with its CA and defaults,
refused elsewhere and for what it does not allow; an OAuthProvider serving its own
namespace; a ClusterOAuthProvider's CA Secret in the operator's namespace. The operator runs
under the chart's RBAC with the default (shared) tenancy and no trusted endpoint: the
provider is the only way to a token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_operator import claims
from tests.integration.test_rbac import under_chart_rbac
from tests.support.cluster import Cluster
from tests.support.controlplane import ControlPlane
from tests.support.idp import CC_POST, CC_POST_SECRET, IdentityProvider
from tests.support.keycloak import Keycloak
from tests.support.operator_process import OperatorProcess
from tests.support.pki import TestCA

pytestmark = pytest.mark.integration

ALLOWED_CLIENTS = "oauth-token-operator.dev/allowed-clients"
GROUP = "oauth-token-operator.dev/v1alpha1"


def provider(kind: str, name: str, issuer: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"issuer": issuer, **spec},
    }


def client(name: str, kind: str, provider_name: str, **spec: Any) -> dict[str, Any]:
    """An OAuthClient that says nothing but its provider and credentials: no endpoint, no
    CA, no client authentication, no scopes."""
    return {
        "apiVersion": GROUP,
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "providerRef": {"kind": kind, "name": provider_name},
            "credentialsSecretRef": {"name": "creds"},
            **spec,
        },
    }


def with_credentials(cluster: Cluster) -> Cluster:
    """The cc-post client's credentials, opted in for every OAuthClient of the namespace."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "annotations": {ALLOWED_CLIENTS: "*"}},
            "stringData": {"client_id": CC_POST, "client_secret": CC_POST_SECRET},
        }
    )
    return cluster


@pytest.fixture
def namespaces(cluster: Cluster, control_plane: ControlPlane) -> Iterator[list[Cluster]]:
    """Three namespaces: the test's own and two more."""
    more = [Cluster(control_plane, f"{cluster.namespace}-{i}") for i in (1, 2)]
    for other in more:
        control_plane.kubectl("create", "namespace", other.namespace)
    yield [cluster, *more]
    for other in more:
        control_plane.kubectl("delete", "namespace", other.namespace, "--wait=false", check=False)


def operator_under_chart_rbac(
    cluster: Cluster, watched: list[Cluster], tmp_path: Path
) -> tuple[OperatorProcess, list[dict[str, Any]], str]:
    """The operator as the chart's ServiceAccount watching `watched`, default tenancy, no
    trusted endpoint; its own namespace (where a ClusterOAuthProvider's CA Secret lives) is
    the release namespace, given as the pod's would be."""
    names = ",".join(c.namespace for c in watched)
    kubeconfig, rbac = under_chart_rbac(cluster, "otop", "pr", f"watchNamespaces={{{names}}}")
    home = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["namespace"]
    args = [a for c in watched[1:] for a in ("--namespace", c.namespace)]
    process = OperatorProcess(
        kubeconfig,
        cluster.namespace,
        tmp_path / "op.log",
        extra_args=(*args, "--operator-namespace", home),
        tenancy=None,
    )
    return process, rbac, home


def token_claims(cluster: Cluster, name: str) -> dict[str, Any]:
    data = cluster.secret_data(f"{name}-token")
    assert data is not None
    return claims(data["access_token"])


def test_a_cluster_provider_serves_listed_and_selected_namespaces_with_its_ca_and_defaults(
    namespaces: list[Cluster],
    control_plane: ControlPlane,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    """The platform says it once: the issuer, the CA that signs it, client_secret_post and
    the api:read scope. Clients in a listed namespace and in a selected one get tokens
    without saying any of it (without the CA the TLS check fails; without the method
    oidc-provider refuses cc-post; without the scope the token lacks it); a third namespace
    is refused and the provider is never asked for it."""
    listed, selected, other = (with_credentials(c) for c in namespaces)
    label = f"sso-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("label", "namespace", selected.namespace, f"{label}=yes")
    name = f"sso-{listed.namespace}"
    sso = provider(
        "ClusterOAuthProvider",
        name,
        identity_provider.issuer,
        namespaces=[listed.namespace],
        namespaceSelector={"matchLabels": {label: "yes"}},
        tls={"caBundle": test_ca.cert_pem.decode()},
        defaults={"clientAuthentication": "client_secret_post", "scopes": ["api:read"]},
        allowedGrantTypes=["client_credentials"],
    )
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(sso))
    for cluster in namespaces:
        cluster.apply(client("app", "ClusterOAuthProvider", name))
    listed.apply(client("rt", "ClusterOAuthProvider", name, grantType="refresh_token"))
    operator, rbac, _ = operator_under_chart_rbac(listed, namespaces, tmp_path)
    identity_provider.reset_stats()
    try:
        with operator:
            for cluster in (listed, selected):
                cluster.wait_ready("app")
                granted = token_claims(cluster, "app")
                assert granted["client_id"] == CC_POST
                assert "api:read" in granted["scope"].split()
            refused = other.wait_not_ready("app")
            assert refused["reason"] == "ProviderNotAllowed", refused
            assert f"does not list namespace {other.namespace}" in refused["message"]
            assert "nor select it by spec.namespaceSelector" in refused["message"]
            assert other.get("secret", "app-token") is None
            grant = listed.wait_not_ready("rt")
            assert grant["reason"] == "ProviderNotAllowed", grant
            assert "does not allow grantType refresh_token" in grant["message"]
            # Only the two served clients reached the provider.
            assert identity_provider.stats()["byGrant"].get("client_credentials") == 2
    finally:
        listed.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)
        control_plane.kubectl("delete", "clusteroauthprovider", name, check=False)


def test_an_oauthprovider_serves_its_own_namespace_only(
    namespaces: list[Cluster],
    control_plane: ControlPlane,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    """A namespace's admins say it once for their namespace (the CA from a Secret beside
    it); the same name from another namespace is not found there."""
    own, elsewhere, _ = (with_credentials(c) for c in namespaces)
    own.create_secret("sso-ca", {"ca.crt": test_ca.cert_pem.decode()})
    own.apply(
        provider(
            "OAuthProvider",
            "sso",
            identity_provider.issuer,
            tls={"caBundleSecretRef": {"name": "sso-ca"}},
            defaults={"clientAuthentication": "client_secret_post"},
        )
    )
    own.apply(client("app", "OAuthProvider", "sso"))
    elsewhere.apply(client("app", "OAuthProvider", "sso"))
    operator, rbac, _ = operator_under_chart_rbac(own, namespaces[:2], tmp_path)
    try:
        with operator:
            own.wait_ready("app")
            assert token_claims(own, "app")["client_id"] == CC_POST
            missing = elsewhere.wait_not_ready("app")
            assert missing["reason"] == "ProviderNotFound", missing
            assert f"not found in namespace {elsewhere.namespace}" in missing["message"]
    finally:
        own.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)


def test_a_cluster_providers_ca_secret_is_read_from_the_operators_namespace(
    cluster: Cluster,
    control_plane: ControlPlane,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    """spec.tls.caBundleSecretRef of a ClusterOAuthProvider names a Secret in the operator's
    namespace, read under the chart's RBAC (a Role there for Secrets, get only); a tenant
    cannot point it at a Secret of theirs."""
    with_credentials(cluster)
    operator, rbac, home = operator_under_chart_rbac(cluster, [cluster], tmp_path)
    Cluster(control_plane, home).create_secret("sso-ca", {"ca.crt": test_ca.cert_pem.decode()})
    name = f"sso-{cluster.namespace}"
    sso = provider(
        "ClusterOAuthProvider",
        name,
        identity_provider.issuer,
        namespaces=["*"],
        tls={"caBundleSecretRef": {"name": "sso-ca"}},
        defaults={"clientAuthentication": "client_secret_post"},
    )
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(sso))
    cluster.apply(client("app", "ClusterOAuthProvider", name))
    try:
        with operator:
            cluster.wait_ready("app")
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)
        control_plane.kubectl("delete", "clusteroauthprovider", name, check=False)


def test_a_client_with_a_provider_may_not_bring_its_own_ca(cluster: Cluster) -> None:
    """The provider's CA is the one used: admission says so."""
    obj = client("app", "ClusterOAuthProvider", "sso", tls={"caBundleSecretRef": {"name": "x"}})
    obj["metadata"]["namespace"] = cluster.namespace
    refused = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert refused.returncode != 0
    assert "the provider's CA bundle is" in refused.stderr


def test_a_cluster_provider_for_keycloak_serves_keyless_and_secret_clients(
    cluster: Cluster, keycloak: Keycloak, test_ca: TestCA, tmp_path: Path
) -> None:
    """The same provider resource in front of Keycloak: a keyless client (its
    ServiceAccount's token, opted in for Keycloak's issuer) and a secret client that takes
    the provider's default method; a method the provider does not allow is refused."""
    ns, control_plane = cluster.namespace, cluster.cp
    name = f"kc-{ns}"
    sso = provider(
        "ClusterOAuthProvider",
        name,
        keycloak.issuer,
        namespaces=[ns],
        tls={"caBundle": test_ca.cert_pem.decode()},
        defaults={"clientAuthentication": "client_secret_post"},
        allowedClientAuthentications=["service_account_token", "client_secret_post"],
    )
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(sso))
    keyless_id, secret_id = f"kl-{ns}", f"sec-{ns}"
    keycloak.add_client(keyless_id, ns, "app")
    secret = f"s-{uuid.uuid4().hex}"
    keycloak.add_secret_client(secret_id, secret)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": "app",
                "annotations": {
                    "oauth-token-operator.dev/token-audiences": keycloak.issuer,
                    "oauth-token-operator.dev/token-endpoints": keycloak.issuer,
                },
            },
        }
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "annotations": {ALLOWED_CLIENTS: "*"}},
            "stringData": {"client_id": secret_id, "client_secret": secret},
        }
    )
    keyless = client(
        "keyless",
        "ClusterOAuthProvider",
        name,
        clientAuthentication="service_account_token",
        serviceAccountToken={"serviceAccountName": "app", "audience": keycloak.issuer},
        clientId=keyless_id,
    )
    del keyless["spec"]["credentialsSecretRef"]
    cluster.apply(keyless)
    cluster.apply(client("secret", "ClusterOAuthProvider", name))
    cluster.apply(
        client("basic", "ClusterOAuthProvider", name, clientAuthentication="client_secret_basic")
    )
    operator = OperatorProcess(control_plane.kubeconfig_path, ns, tmp_path / "op.log", tenancy=None)
    try:
        with operator:
            for name_, client_id in (("keyless", keyless_id), ("secret", secret_id)):
                cluster.wait_ready(name_, timeout=60)
                granted = token_claims(cluster, name_)
                assert (granted["azp"], granted["iss"]) == (client_id, keycloak.issuer)
            refused = cluster.wait_not_ready("basic")
            assert refused["reason"] == "ProviderNotAllowed", refused
            assert "does not allow clientAuthentication client_secret_basic" in refused["message"]
            assert "eyJ" not in operator.logs()
    finally:
        control_plane.kubectl("delete", "clusteroauthprovider", name, check=False)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"issuer": "https://a.example", "tokenEndpoint": "https://a.example/t"},
            "set exactly one of spec.issuer",
        ),
        ({"issuer": "https://a.example"}, "set spec.namespaces and/or spec.namespaceSelector"),
        (
            {"issuer": "https://a.example", "namespaces": ["*"], "tls": {"caBundle": "x"}},
            "spec.tls.caBundle must hold PEM certificates",
        ),
        (
            {
                "issuer": "https://a.example",
                "namespaces": ["*"],
                "defaults": {"clientAuthentication": "service_account_token"},
            },
            'Unsupported value: "service_account_token"',
        ),
        (
            {
                "issuer": "https://a.example",
                "namespaces": ["*"],
                "defaults": {"extraParams": {"client_secret": "x"}},
            },
            "must not set a parameter the operator sets itself",
        ),
        (
            {"issuer": "https://u:p@a.example", "namespaces": ["*"]},
            "must not contain credentials",
        ),
    ],
)
def test_admission_refuses_a_provider_that_cannot_work(
    control_plane: ControlPlane, crd: None, spec: dict[str, Any], message: str
) -> None:
    obj = {
        "apiVersion": GROUP,
        "kind": "ClusterOAuthProvider",
        "metadata": {"name": f"bad-{uuid.uuid4().hex[:8]}"},
        "spec": spec,
    }
    refused = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False
    )
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr


def test_kubectl_explains_the_provider_fields(control_plane: ControlPlane, crd: None) -> None:
    for kind in ("clusteroauthprovider", "oauthprovider"):
        explained = control_plane.kubectl("explain", f"{kind}.spec.defaults.clientAuthentication")
        assert "The method for clients that set no spec.clientAuthentication" in explained.stdout
