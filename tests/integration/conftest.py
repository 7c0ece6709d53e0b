"""Session-wide fixtures for the integration tests: one test CA and one identity provider."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import CRDS
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.idp import IdentityProvider
from tests.support.keycloak import Keycloak
from tests.support.operator_process import OperatorProcess
from tests.support.pki import TestCA


@pytest.fixture(scope="session")
def test_ca() -> TestCA:
    """The CA every loopback service of the session serves certificates from."""
    return TestCA()


@pytest.fixture(scope="session")
def identity_provider(test_ca: TestCA) -> Iterator[IdentityProvider]:
    """oidc-provider with `default_clients()`; tests must not rely on absolute stats counts
    without calling `reset_stats()` first."""
    with IdentityProvider(test_ca) as idp:
        yield idp


@pytest.fixture(scope="module")
def short_lived_idp(test_ca: TestCA) -> Iterator[IdentityProvider]:
    """A provider whose access tokens live 20 s, so refreshes happen within a test."""
    with IdentityProvider(test_ca, access_token_ttl=20) as idp:
        yield idp


CRD = CRDS / "oauthclients.oauth-token-operator.dev.yaml"
PROVIDER_CRD = CRDS / "clusteroauthproviders.oauth-token-operator.dev.yaml"
NAMESPACED_PROVIDER_CRD = CRDS / "oauthproviders.oauth-token-operator.dev.yaml"


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> None:
    """The CRDs from crds/ (OAuthClient and the two provider kinds), installed and
    established."""
    for path in (CRD, PROVIDER_CRD, NAMESPACED_PROVIDER_CRD):
        control_plane.kubectl("apply", "-f", str(path))
    for name in ("oauthclients", "clusteroauthproviders", "oauthproviders"):
        # Retried: a wait right after the apply can find no conditions yet, and fail.
        def established(crd: str = f"crd/{name}.oauth-token-operator.dev") -> bool:
            wait = ("wait", "--for=condition=Established", "--timeout=60s", crd)
            return control_plane.kubectl(*wait, check=False).returncode == 0

        eventually(established, timeout=60, what=f"the {name} CRD established")


@pytest.fixture(scope="session")
def keycloak(control_plane: ControlPlane, test_ca: TestCA) -> Iterator[Keycloak]:
    """Keycloak over TLS from the test CA, trusting the apiserver's ServiceAccount issuer;
    started once, for the modules that need it (keyless, providers)."""
    # A provider outside the cluster reads the issuer's discovery document and JWKS without
    # credentials, as Kubernetes documents for ServiceAccount issuer discovery.
    binding = "keyless-test-anonymous-issuer-discovery"
    control_plane.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=system:service-account-issuer-discovery",
        "--group=system:unauthenticated",
    )
    try:
        with Keycloak(test_ca, control_plane.ca_pem, control_plane.server) as kc:
            yield kc
    finally:
        control_plane.kubectl("delete", "clusterrolebinding", binding)


@pytest.fixture
def cluster(control_plane: ControlPlane, crd: None) -> Cluster:
    """A fresh namespace of its own for each test."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    return Cluster(control_plane, namespace)


@pytest.fixture
def idp_ca_secret(cluster: Cluster, test_ca: TestCA) -> str:
    """A Secret with the test CA, for spec.tls.caBundleSecretRef."""
    cluster.create_secret("idp-ca", {"ca.crt": test_ca.cert_pem.decode()})
    return "idp-ca"


@pytest.fixture
def operator_process(
    control_plane: ControlPlane, cluster: Cluster, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace, as admin, with a short propagation
    margin so that short-lived test tokens refresh within seconds."""
    process = OperatorProcess(
        control_plane.kubeconfig_path,
        cluster.namespace,
        tmp_path / "operator.log",
        ("--propagation-margin", "2s"),
    )
    with process:
        yield process
