"""Recovery that waits for no timer, against the real kube-apiserver and oidc-provider: an
edited output Secret is restored, a fixed credentials Secret is used at once, and a restart
carries a failing client's retry time and failure count on."""

from __future__ import annotations

import base64
import json
import time

import pytest

from oauth_token_operator.wire import parse_rfc3339
from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster, eventually
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def test_an_edited_output_secret_is_restored_without_a_token_request(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(oauth_client("drift", identity_provider.issuer, "creds"))
    cluster.wait_ready("drift")
    before = cluster.secret_data("drift-token")
    assert before is not None
    identity_provider.reset_stats()

    forged = base64.b64encode(b"typed-by-hand").decode()
    patch = json.dumps({"data": {"access_token": forged}})
    cluster.kubectl("patch", "secret", "drift-token", "-n", cluster.namespace, "-p", patch)

    eventually(
        lambda: cluster.secret_data("drift-token") == before,
        timeout=15,
        what="the token restored",
    )
    assert identity_provider.stats()["tokenRequests"] == 0
    assert any(e["reason"] == "SecretRestored" for e in cluster.events("drift"))


def test_credentials_with_wrong_keys_fixed_are_used_within_seconds(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    cluster.create_secret("creds", {"id": CC_BASIC, "secret": CC_BASIC_SECRET})  # wrong keys
    cluster.apply(oauth_client("keys", identity_provider.issuer, "creds"))
    assert cluster.wait_not_ready("keys")["reason"] == "CredentialsInvalid"

    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.wait_ready("keys", timeout=15)  # the retry timer is minutes away


def test_a_restart_resumes_a_failing_client_at_its_recorded_retry(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    operator_process: OperatorProcess,
) -> None:
    """kill -9 and restart: the client that answered invalid_client is not retried at once
    (no burst at the provider), its status keeps the failure count and the retry time."""
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": "wrong-secret"})
    identity_provider.reset_stats()
    cluster.apply(oauth_client("failing", identity_provider.issuer, "creds"))
    assert cluster.wait_not_ready("failing")["reason"] == "InvalidClient"
    status = (cluster.get("oauthclient", "failing") or {})["status"]
    assert status["consecutiveFailures"] == 1
    assert identity_provider.stats()["tokenRequests"] == 1

    operator_process.kill()
    offset = len(operator_process.logs())
    operator_process.start()
    operator_process.wait_for_log(f"{cluster.namespace}/failing: was failing", after=offset)
    time.sleep(3)

    assert identity_provider.stats()["tokenRequests"] == 1  # the retry is minutes away
    after = (cluster.get("oauthclient", "failing") or {})["status"]
    assert after["consecutiveFailures"] == 1
    assert after["nextRefreshTime"] == status["nextRefreshTime"]
    retry = parse_rfc3339(after["nextRefreshTime"])
    assert retry is not None and retry > time.time() + 60
