"""`token` and `login` take the provider from the OAuthClient (or `login --provider`), against
the real API server and oidc-provider: a ClusterOAuthProvider's CA bundle Secret is read in
the operator's namespace (--operator-namespace, here another namespace than the client's),
an OAuthProvider's in its own, and what stops them is said in one line."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import yaml

from tests.integration.test_cli_errors import one_line_error
from tests.support.cli import cli, login
from tests.support.cluster import Cluster
from tests.support.controlplane import ControlPlane
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, RT_PUBLIC, IdentityProvider
from tests.support.pki import TestCA

pytestmark = pytest.mark.integration

API_VERSION = "oauth-token-operator.dev/v1alpha1"


@pytest.fixture
def ops(control_plane: ControlPlane, test_ca: TestCA) -> Cluster:
    """Another namespace, standing for the operator's, with the test CA in Secret sso-ca."""
    namespace = f"ops-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    home = Cluster(control_plane, namespace)
    home.create_secret("sso-ca", {"ca.crt": test_ca.cert_pem.decode()})
    return home


@pytest.fixture
def sso(
    control_plane: ControlPlane, cluster: Cluster, identity_provider: IdentityProvider
) -> Iterator[str]:
    """A ClusterOAuthProvider for the test's namespace whose CA bundle is Secret sso-ca of
    the operator's namespace, with default scopes and client authentication."""
    name = f"sso-{cluster.namespace}"
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            cluster_provider(
                name,
                [cluster.namespace],
                issuer=identity_provider.issuer,
                tls={"caBundleSecretRef": {"name": "sso-ca"}},
                defaults={
                    "scopes": ["openid", "offline_access"],
                    "clientAuthentication": "client_secret_basic",
                },
            )
        ),
    )
    yield name
    control_plane.kubectl("delete", "clusteroauthprovider", name, check=False)


def cluster_provider(name: str, namespaces: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterOAuthProvider",
        "metadata": {"name": name},
        "spec": {"namespaces": namespaces, **spec},
    }


def by_ref(name: str, provider: str, credentials: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "providerRef": {"kind": "ClusterOAuthProvider", "name": provider},
            "credentialsSecretRef": {"name": credentials},
            **spec,
        },
    }


def authorize_params(result: Any) -> dict[str, list[str]]:
    """The query of the authorize URL `login` printed."""
    url = next(line for line in result.stderr.splitlines() if line.startswith("https://"))
    return parse_qs(urlsplit(url).query)


# --- token ---------------------------------------------------------------------------------


def test_token_through_a_cluster_provider_with_its_ca_in_the_operators_namespace(
    cluster: Cluster, ops: Cluster, sso: str
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(by_ref("api", sso, "creds", scopes=["openid"]))  # offline_access is not for it

    result = cli(
        cluster, "token", "api", "-n", cluster.namespace, "--operator-namespace", ops.namespace
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stderr)
    assert summary["claims"]["client_id"] == CC_BASIC
    assert "openid" in summary["claims"]["scope"].split()
    assert CC_BASIC_SECRET not in result.stderr + result.stdout

    variable = {"OAUTH_TOKEN_OPERATOR_OPERATOR_NAMESPACE": ops.namespace}
    assert cli(cluster, "token", "api", "-n", cluster.namespace, env=variable).returncode == 0

    # By default the chart's namespace, where this CA bundle Secret is not.
    line = one_line_error(
        cli(cluster, "token", "api", "-n", cluster.namespace),
        "InvalidCABundle: CA bundle Secret sso-ca (namespace oauth-token-operator, of "
        f"ClusterOAuthProvider {sso}) not found",
        "say which with --operator-namespace",
    )
    assert CC_BASIC_SECRET not in line


def test_token_says_in_one_line_why_a_provider_cannot_be_used(
    cluster: Cluster, control_plane: ControlPlane, ops: Cluster, sso: str
) -> None:
    ns = cluster.namespace
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    elsewhere = f"elsewhere-{ns}"
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            cluster_provider(elsewhere, ["some-other-namespace"], issuer="https://x.example")
        ),
    )
    cluster.apply(by_ref("api", sso, "creds", scopes=["openid"]))
    cluster.apply(by_ref("stray", elsewhere, "creds"))
    cluster.apply(by_ref("gone", f"missing-{ns}", "creds"))
    user = f"dev-{ns}"
    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "token-user", "namespace": ns},
            "rules": [
                {
                    "apiGroups": ["oauth-token-operator.dev"],
                    "resources": ["oauthclients"],
                    "verbs": ["get"],
                },
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "token-user", "namespace": ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "token-user",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]
    providers = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": user},
            "rules": [
                {
                    "apiGroups": ["oauth-token-operator.dev"],
                    "resources": ["clusteroauthproviders"],
                    "verbs": ["get"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": user},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": user,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]
    try:
        admin = ("-n", ns, "--operator-namespace", ops.namespace)
        one_line_error(
            cli(cluster, "token", "gone", *admin),
            f"ProviderNotFound: ClusterOAuthProvider missing-{ns} (spec.providerRef) not found",
        )
        one_line_error(
            cli(cluster, "token", "stray", *admin),
            f"ProviderNotAllowed: ClusterOAuthProvider {elsewhere} does not list namespace {ns}",
        )

        # A user with the namespace's OAuthClients and Secrets, but not the platform's.
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
        kubeconfig = str(control_plane.user_kubeconfig(user))
        as_user = {"KUBECONFIG": kubeconfig}
        refused = one_line_error(
            cli(cluster, "token", "api", *admin, env=as_user),
            f"the API server refused to let you read ClusterOAuthProvider {sso}, the provider "
            f"of OAuthClient {ns}/api (HTTP 403: ",
            "`token` reads it as you: ask for get on it",
        )
        assert CC_BASIC_SECRET not in refused
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(providers))
        refused = one_line_error(
            cli(cluster, "token", "api", *admin, env=as_user),
            f"the API server refused to let you read the CA bundle Secret {ops.namespace}/sso-ca "
            f"of ClusterOAuthProvider {sso} (HTTP 403: ",
            "ask for get on that Secret",
        )
        assert CC_BASIC_SECRET not in refused
    finally:
        for objects in (rbac, providers):
            control_plane.kubectl(
                "delete",
                "--ignore-not-found",
                "-f",
                "-",
                input=yaml.safe_dump_all(objects),
                check=False,
            )
        control_plane.kubectl("delete", "clusteroauthprovider", elsewhere, check=False)


# --- login ---------------------------------------------------------------------------------


def test_login_through_a_cluster_provider_with_its_ca_and_default_scopes(
    cluster: Cluster, identity_provider: IdentityProvider, ops: Cluster, sso: str, tmp_path: Path
) -> None:
    """No --issuer, no --ca-file, no --scope: all from the provider."""
    source = ("--provider", sso, "--operator-namespace", ops.namespace)
    result = login(
        cluster, identity_provider, tmp_path, "pub-creds", RT_PUBLIC, source=source, scopes=()
    )
    assert result.returncode == 0, result.stderr
    assert authorize_params(result)["scope"] == ["openid offline_access"]
    stored = cluster.secret_data("pub-creds")
    assert stored is not None and stored["client_id"] == RT_PUBLIC and stored["refresh_token"]


def test_login_through_a_namespaced_provider_with_its_inline_ca(
    cluster: Cluster, identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    cluster.apply(
        {
            "apiVersion": API_VERSION,
            "kind": "OAuthProvider",
            "metadata": {"name": "sso"},
            "spec": {
                "issuer": identity_provider.issuer,
                "tls": {"caBundle": identity_provider.ca_pem.decode()},
            },
        }
    )
    source = ("--provider", "OAuthProvider/sso")
    result = login(cluster, identity_provider, tmp_path, "pub-creds", RT_PUBLIC, source=source)
    assert result.returncode == 0, result.stderr
    stored = cluster.secret_data("pub-creds")
    assert stored is not None and stored["refresh_token"]


def test_login_for_a_client_stores_where_it_reads_and_token_then_works(
    cluster: Cluster, identity_provider: IdentityProvider, ops: Cluster, sso: str, tmp_path: Path
) -> None:
    """--client: its provider's issuer and CA, its scopes, its Secret and keys."""
    client = by_ref("pub", sso, "pub-creds", grantType="refresh_token", clientAuthentication="none")
    client["spec"]["credentialsSecretRef"]["refreshTokenKey"] = "rt"
    client["spec"]["scopes"] = ["openid", "offline_access"]
    cluster.apply(client)
    home = ("--operator-namespace", ops.namespace)
    result = login(
        cluster,
        identity_provider,
        tmp_path,
        None,
        RT_PUBLIC,
        source=("--client", "pub", *home),
        scopes=(),
    )
    assert result.returncode == 0, result.stderr
    assert f"in Secret {cluster.namespace}/pub-creds" in result.stderr
    stored = cluster.secret_data("pub-creds")
    assert stored is not None and set(stored) == {"client_id", "rt"}

    token = cli(cluster, "token", "pub", "-n", cluster.namespace, *home, "--print-token")
    assert token.returncode == 0, token.stderr
    assert json.loads(token.stderr)["refreshTokenRotated"] is True
    assert (
        jwt.decode(token.stdout.strip(), options={"verify_signature": False})["sub_type"] == "user"
    )


def test_login_says_in_one_line_what_it_cannot_use(
    cluster: Cluster, control_plane: ControlPlane, ops: Cluster, sso: str
) -> None:
    ns = cluster.namespace
    endpoint_only = f"endpoint-{ns}"
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            cluster_provider(endpoint_only, [ns], tokenEndpoint="https://x.example/token")
        ),
    )
    cluster.apply(by_ref("cc", sso, "creds"))  # client_credentials
    base = ("login", "--client-id", RT_PUBLIC, "--no-browser", "-n", ns)
    try:
        one_line_error(
            cli(cluster, *base, "--secret", "s", "--provider", endpoint_only),
            f"ClusterOAuthProvider {endpoint_only} has spec.tokenEndpoint and no spec.issuer: "
            "login needs an issuer",
        )
        one_line_error(
            cli(cluster, *base, "--client", "cc"),
            f"OAuthClient {ns}/cc has grantType client_credentials",
        )
        one_line_error(cli(cluster, *base, "--client", "nope"), f"OAuthClient {ns}/nope not found")
        one_line_error(
            cli(cluster, *base, "--secret", "s", "--provider", sso),  # the chart's namespace
            f"the CA bundle Secret oauth-token-operator/sso-ca of ClusterOAuthProvider {sso} not "
            "found",
            "--operator-namespace",
            "or give --ca-file",
        )
        assert cluster.get("secret", "s") is None  # nothing was stored
    finally:
        control_plane.kubectl("delete", "clusteroauthprovider", endpoint_only, check=False)
