"""Mutual-TLS client authentication (RFC 8705) against the real provider: tls_client_auth
with a certificate from a CA the provider trusts, self_signed_tls_client_auth with a
registered certificate, certificate-bound access tokens, and a renewed certificate picked up
from its kubernetes.io/tls Secret within seconds."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster, eventually
from tests.support.idp import MTLS_PKI, MTLS_SELF, MTLS_SELF_CERTS, IdentityProvider
from tests.support.operator_process import OperatorProcess
from tests.support.pki import KeyPair, TestCA, thumbprint

pytestmark = pytest.mark.integration


def tls_secret(cluster: Cluster, name: str, pair: KeyPair) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": pair.cert_pem.decode(), "tls.key": pair.key_pem.decode()},
        }
    )


def mtls_client(name: str, idp: IdentityProvider, auth: str, **spec: Any) -> dict[str, Any]:
    client = oauth_client(name, idp.issuer, f"{name}-id", clientAuthentication=auth, **spec)
    client["spec"]["tls"]["clientCertificateSecretRef"] = {"name": f"{name}-cert"}
    return client


def bound_to(cluster: Cluster, secret: str) -> str | None:
    """The x5t#S256 the access token in the output Secret is bound to."""
    token = (cluster.secret_data(secret) or {}).get("access_token")
    if not token:
        return None
    claims = jwt.decode(token, options={"verify_signature": False})
    return str((claims.get("cnf") or {}).get("x5t#S256")) or None


@pytest.mark.parametrize("auth", ["tls_client_auth", "self_signed_tls_client_auth"])
def test_certificate_authenticates_binds_the_token_and_renews_within_seconds(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
    test_ca: TestCA,
    auth: str,
) -> None:
    if auth == "tls_client_auth":
        client_id = MTLS_PKI
        first, renewed = test_ca.client_cert(MTLS_PKI), test_ca.client_cert(MTLS_PKI)
    else:
        client_id = MTLS_SELF
        first, renewed = MTLS_SELF_CERTS
    tls_secret(cluster, "app-cert", first)
    client = mtls_client("app", identity_provider, auth)
    if auth == "self_signed_tls_client_auth":  # the ID in the spec: no credentials Secret
        del client["spec"]["credentialsSecretRef"]
        client["spec"]["clientId"] = client_id
    else:
        cluster.create_secret("app-id", {"client_id": client_id})
    cluster.apply(client)

    cluster.wait_ready("app")
    assert bound_to(cluster, "app-token") == thumbprint(first.cert_pem)
    output = cluster.get("secret", "app-token")
    assert output is not None
    annotations = output["metadata"]["annotations"]
    assert annotations["oauth-token-operator.dev/client-certificate-secret"] == "app-cert"

    # cert-manager renews the certificate: the next token is bound to the new one.
    renewed_at = time.monotonic()
    tls_secret(cluster, "app-cert", renewed)
    eventually(
        lambda: bound_to(cluster, "app-token") == thumbprint(renewed.cert_pem),
        timeout=30,
        interval=0.2,
        what="a token bound to the renewed certificate",
    )
    print(f"\n{auth}: renewed certificate -> bound token in {time.monotonic() - renewed_at:.1f} s")
    ready = cluster.ready("app")
    assert ready is not None and ready["status"] == "True"


def test_certificate_errors_are_reported_and_nothing_is_minted(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
    test_ca: TestCA,
) -> None:
    # A certificate from the trusted CA with another subject: the provider refuses.
    cluster.create_secret("stranger-id", {"client_id": MTLS_PKI})
    tls_secret(cluster, "stranger-cert", test_ca.client_cert("someone-else"))
    cluster.apply(mtls_client("stranger", identity_provider, "tls_client_auth"))
    # The certificate Secret does not exist yet.
    cluster.create_secret("late-id", {"client_id": MTLS_PKI})
    cluster.apply(mtls_client("late", identity_provider, "tls_client_auth"))

    assert cluster.wait_not_ready("stranger")["reason"] == "InvalidClient"
    assert cluster.get("secret", "stranger-token") is None
    late = cluster.wait_not_ready("late")
    assert late["reason"] == "CredentialsNotFound"
    assert "client certificate Secret late-cert not found" in late["message"]
    tls_secret(cluster, "late-cert", test_ca.client_cert(MTLS_PKI))
    cluster.wait_ready("late", timeout=30)  # the Secret's creation triggers the run


def test_admission_requires_a_certificate_and_https(cluster: Cluster) -> None:
    def refused(client: dict[str, Any]) -> str:
        client["metadata"]["namespace"] = cluster.namespace
        result = cluster.kubectl("apply", "-f", "-", input=json.dumps(client), check=False)
        assert result.returncode != 0
        return str(result.stderr)

    without = oauth_client(
        "a", "https://idp.example", "creds", clientAuthentication="tls_client_auth"
    )
    assert "need spec.tls.clientCertificateSecretRef" in refused(without)
    plain = oauth_client("b", "https://idp.example", "creds")
    del plain["spec"]["issuer"]
    plain["spec"]["tokenEndpoint"] = "http://idp.example/token"
    plain["spec"]["tls"]["clientCertificateSecretRef"] = {"name": "cert"}
    assert "only presented over https" in refused(plain)
