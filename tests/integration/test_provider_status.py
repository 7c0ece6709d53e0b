"""Providers report on themselves, and their changes reach their clients within seconds,
against the real apiserver and oidc-provider: the operator runs under the chart's RBAC
with its default tenancy (shared), its own namespace being the test's.

A client's own schedule is far off in each test (a one-hour token, or a backoff that grew),
so a client that runs "within seconds" ran because of its provider; the tests compare the
times the operator recorded (status.lastRefreshTime before the status.nextRefreshTime it had
set), not the wall clock."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from oauth_token_operator.wire import parse_rfc3339
from tests.integration.conftest import NAMESPACED_PROVIDER_CRD, PROVIDER_CRD
from tests.integration.test_operator import claims, oauth_client
from tests.integration.test_rbac import under_chart_rbac
from tests.integration.test_tenancy import ALLOWED_CLIENTS
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, IdentityProvider
from tests.support.operator_process import OperatorProcess
from tests.support.pki import TestCA

pytestmark = pytest.mark.integration

GROUP = "oauth-token-operator.dev"
CLUSTER_KIND, NAMESPACED_KIND = "ClusterOAuthProvider", "OAuthProvider"
PLURALS = {CLUSTER_KIND: "clusteroauthproviders", NAMESPACED_KIND: "oauthproviders"}
WAIT = 60.0  # generous: each step takes seconds, and the clients' own schedules are far off


def cluster_provider(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": CLUSTER_KIND,
        "metadata": {"name": name},
        "spec": {"namespaces": [namespace], **spec},
    }


def by_ref(name: str, provider: str, kind: str = CLUSTER_KIND) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "providerRef": {"kind": kind, "name": provider},
            "clientAuthentication": "client_secret_basic",
            "credentialsSecretRef": {"name": "creds"},
        },
    }


class Providers:
    """Provider objects through kubectl as admin (the platform); cluster-scoped ones are
    deleted at the end of the test."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.made: list[str] = []

    def apply(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == CLUSTER_KIND:
            self.made.append(obj["metadata"]["name"])
        else:
            obj["metadata"]["namespace"] = self.cluster.namespace
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.cluster.kubectl(
            "patch", PLURALS[CLUSTER_KIND], name, "--type=merge", "-p", json.dumps({"spec": spec})
        )

    def get(self, name: str, kind: str = CLUSTER_KIND) -> dict[str, Any]:
        where = ("-n", self.cluster.namespace) if kind == NAMESPACED_KIND else ()
        got = self.cluster.kubectl("get", PLURALS[kind], name, *where, "-o", "json")
        obj: dict[str, Any] = json.loads(got.stdout)
        return obj

    def ready(self, name: str, kind: str = CLUSTER_KIND) -> dict[str, Any] | None:
        for condition in (self.get(name, kind).get("status") or {}).get("conditions") or []:
            if condition["type"] == "Ready":
                return dict(condition)
        return None

    def wait(self, name: str, status: str, kind: str = CLUSTER_KIND) -> dict[str, Any]:
        """The provider once its Ready condition has this status for its generation."""

        def reported() -> dict[str, Any] | None:
            obj = self.get(name, kind)
            generation = obj["metadata"]["generation"]
            for condition in (obj.get("status") or {}).get("conditions") or []:
                wanted = ("Ready", status, generation)
                if (
                    condition["type"],
                    condition["status"],
                    condition.get("observedGeneration"),
                ) == wanted:
                    return obj
            return None

        return eventually(reported, timeout=WAIT, what=f"{kind} {name} Ready={status}")

    def delete_all(self) -> None:
        for name in self.made:
            self.cluster.kubectl("delete", PLURALS[CLUSTER_KIND], name, check=False)


@pytest.fixture
def providers(cluster: Cluster) -> Iterator[Providers]:
    made = Providers(cluster)
    yield made
    made.delete_all()


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator under the chart's RBAC (namespaced mode, the test's namespace), shared
    tenancy, its own namespace the test's (where ClusterOAuthProviders' CA Secrets are); and
    the client credentials, opted in."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "annotations": {ALLOWED_CLIENTS: "*"}},
            "stringData": {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET},
        }
    )
    kubeconfig, rbac = under_chart_rbac(cluster, "pst", "ps")
    process = OperatorProcess(
        kubeconfig,
        cluster.namespace,
        tmp_path / "operator.log",
        ("--operator-namespace", cluster.namespace),
        tenancy=None,
    )
    try:
        with process:
            yield process
    finally:
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)


def ca_pem(test_ca: TestCA) -> str:
    return test_ca.cert_pem.decode()


def failed_with(cluster: Cluster, name: str, reason: str) -> dict[str, Any]:
    """The client once it is Ready=False with this reason; its status."""

    def failing() -> dict[str, Any] | None:
        ready = cluster.ready(name)
        if ready and (ready["status"], ready["reason"]) == ("False", reason):
            obj = cluster.get("oauthclient", name)
            return obj["status"] if obj else None
        return None

    return eventually(failing, timeout=WAIT, what=f"{name} Ready=False {reason}")


def ran_before(status: dict[str, Any], due: str) -> None:
    """The client's last exchange came before the run its own schedule had set (`due`)."""
    ran, scheduled = parse_rfc3339(status["lastRefreshTime"]), parse_rfc3339(due)
    assert ran is not None and scheduled is not None
    assert ran + 2 <= scheduled, (status, due)


def test_a_provider_reports_ready_with_its_discovered_token_endpoint(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    providers: Providers,
    operator: OperatorProcess,
) -> None:
    ns = cluster.namespace
    issuer, given = f"sso-{ns}", f"given-{ns}"
    providers.apply(
        cluster_provider(
            issuer, ns, issuer=identity_provider.issuer, tls={"caBundle": ca_pem(test_ca)}
        )
    )
    providers.apply(cluster_provider(given, ns, tokenEndpoint=identity_provider.token_endpoint))
    own = cluster_provider("own", ns, issuer=identity_provider.issuer)
    own["kind"] = NAMESPACED_KIND
    del own["spec"]["namespaces"]
    own["spec"]["tls"] = {"caBundle": ca_pem(test_ca)}
    providers.apply(own)

    obj = providers.wait(issuer, "True")
    assert obj["status"]["tokenEndpoint"] == identity_provider.token_endpoint
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    ready = providers.ready(issuer)
    assert ready is not None and ready["reason"] == "DiscoveryFetched"
    assert identity_provider.issuer in ready["message"] and ready["lastTransitionTime"]
    given_ready = providers.wait(given, "True")["status"]["conditions"][0]
    assert given_ready["reason"] == "TokenEndpointConfigured"
    assert "used as given" in given_ready["message"]
    own_obj = providers.wait("own", "True", NAMESPACED_KIND)
    assert own_obj["status"]["tokenEndpoint"] == identity_provider.token_endpoint

    table = cluster.kubectl("get", "clusteroauthproviders", issuer, given).stdout
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["NAME", "READY", "REASON"], table
    columns = {row.split()[0]: row.split()[1:3] for row in rows}
    assert columns == {
        given: ["True", "TokenEndpointConfigured"],
        issuer: ["True", "DiscoveryFetched"],
    }, table
    own_table = cluster.kubectl("get", "oauthproviders", "own", "-n", ns).stdout
    assert own_table.splitlines()[1].split()[:3] == ["own", "True", "DiscoveryFetched"]
    # No status write is repeated while nothing changes (a check every few minutes).
    version = providers.get(issuer)["metadata"]["resourceVersion"]
    time.sleep(3)
    assert providers.get(issuer)["metadata"]["resourceVersion"] == version


def test_a_failing_provider_and_its_clients_say_why_and_work_within_seconds_of_the_fix(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    providers: Providers,
    operator: OperatorProcess,
) -> None:
    """A CA Secret that does not sign the provider's certificate (fixed by changing the
    Secret), and an issuer whose discovery document is not there (fixed by an edit)."""
    ns = cluster.namespace
    untrusted, wrong = f"untrusted-{ns}", f"wrong-issuer-{ns}"
    cluster.create_secret("sso-ca", {"ca.crt": ca_pem(TestCA("some other CA"))})
    providers.apply(
        cluster_provider(
            untrusted,
            ns,
            issuer=identity_provider.issuer,
            tls={"caBundleSecretRef": {"name": "sso-ca"}},
        )
    )
    providers.apply(
        cluster_provider(
            wrong,
            ns,
            issuer=identity_provider.issuer + "/elsewhere",
            tls={"caBundle": ca_pem(test_ca)},
        )
    )
    cluster.apply(by_ref("behind-untrusted", untrusted))
    cluster.apply(by_ref("behind-wrong", wrong))

    failing = providers.wait(untrusted, "False")
    assert failing["status"]["conditions"][0]["reason"] == "TLSVerificationFailed"
    assert "tokenEndpoint" not in failing["status"]
    failing = providers.wait(wrong, "False")
    assert failing["status"]["conditions"][0]["reason"] == "DiscoveryFailed"
    assert "/elsewhere" in failing["status"]["conditions"][0]["message"]
    # Their clients say the same, and would try again only minutes later.
    first = failed_with(cluster, "behind-untrusted", "TLSVerificationFailed")
    second = failed_with(cluster, "behind-wrong", "DiscoveryFailed")
    assert cluster.get("secret", "behind-untrusted-token") is None

    cluster.create_secret("sso-ca", {"ca.crt": ca_pem(test_ca)})
    providers.patch(wrong, {"issuer": identity_provider.issuer})
    for name in (untrusted, wrong):
        obj = providers.wait(name, "True")
        assert obj["status"]["tokenEndpoint"] == identity_provider.token_endpoint
    fixed = cluster.wait_ready("behind-untrusted", timeout=int(WAIT))["status"]
    ran_before(fixed, first["nextRefreshTime"])
    fixed = cluster.wait_ready("behind-wrong", timeout=int(WAIT))["status"]
    ran_before(fixed, second["nextRefreshTime"])
    assert cluster.secret_data("behind-wrong-token")


def test_a_provider_edit_reaches_a_client_with_a_valid_token_within_seconds(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    providers: Providers,
    operator: OperatorProcess,
) -> None:
    ns = cluster.namespace
    name = f"sso-{ns}"
    providers.apply(
        cluster_provider(
            name,
            ns,
            issuer=identity_provider.issuer,
            tls={"caBundle": ca_pem(test_ca)},
            defaults={"scopes": ["openid"]},
        )
    )
    cluster.apply(by_ref("app", name))
    status = cluster.wait_ready("app", timeout=int(WAIT))["status"]
    token = (cluster.secret_data("app-token") or {})["access_token"]
    assert "api:read" not in claims(token)["scope"].split()
    due = status["nextRefreshTime"]  # a one-hour token: tens of minutes away

    def new_token(old: str) -> str | None:
        current = (cluster.secret_data("app-token") or {}).get("access_token")
        return current if current and current != old else None

    providers.patch(name, {"defaults": {"scopes": ["openid", "api:read"]}})
    token = eventually(lambda: new_token(token), timeout=WAIT, what="a token with the new scope")
    assert "api:read" in claims(token)["scope"].split()
    # A new CA bundle (the same CA beside another one): a new token too.
    bundle = ca_pem(test_ca) + ca_pem(TestCA("another CA"))
    providers.patch(name, {"tls": {"caBundle": bundle}})
    token = eventually(lambda: new_token(token), timeout=WAIT, what="a token after the new CA")
    ran_before(cluster.wait_ready("app")["status"], due)
    assert (cluster.ready("app") or {}).get("reason") == "TokenIssued"


def test_a_client_that_could_not_find_its_provider_works_within_seconds_of_its_creation(
    cluster: Cluster,
    identity_provider: IdentityProvider,
    test_ca: TestCA,
    providers: Providers,
    operator: OperatorProcess,
) -> None:
    ns = cluster.namespace
    name = f"late-{ns}"
    cluster.apply(by_ref("app", name))

    def backed_off() -> dict[str, Any] | None:
        """Failed a few times, so that its next try is well ahead."""
        obj = cluster.get("oauthclient", "app") or {}
        status = obj.get("status") or {}
        due = parse_rfc3339(status.get("nextRefreshTime"))
        if cluster.ready("app") is None or due is None:
            return None
        ahead = due - time.time() >= 8 and status.get("consecutiveFailures", 0) >= 3
        return status if ahead else None

    status = eventually(backed_off, timeout=120, interval=0.3, what="a few ProviderNotFound")
    assert status["conditions"][0]["reason"] == "ProviderNotFound"
    providers.apply(
        cluster_provider(
            name, ns, issuer=identity_provider.issuer, tls={"caBundle": ca_pem(test_ca)}
        )
    )
    ready = cluster.wait_ready("app", timeout=int(WAIT))["status"]
    ran_before(ready, status["nextRefreshTime"])
    providers.wait(name, "True")


PROVIDER_CRDS = (
    "clusteroauthproviders.oauth-token-operator.dev",
    "oauthproviders.oauth-token-operator.dev",
)


def _install_provider_crds(control_plane: ControlPlane) -> None:
    for path in (PROVIDER_CRD, NAMESPACED_PROVIDER_CRD):
        control_plane.kubectl("apply", "-f", str(path))
    for crd in PROVIDER_CRDS:
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")


@pytest.fixture
def provider_crds_restored(control_plane: ControlPlane) -> Iterator[None]:
    """Whatever the test does to the provider CRDs, the next test finds them installed."""
    yield
    _install_provider_crds(control_plane)


def test_the_operator_runs_without_the_provider_crds_and_serves_them_once_installed(
    control_plane: ControlPlane,
    cluster: Cluster,
    identity_provider: IdentityProvider,
    idp_ca_secret: str,
    test_ca: TestCA,
    providers: Providers,
    tmp_path: Path,
    provider_crds_restored: None,
) -> None:
    """An install from deploy/crd.yaml alone (before providers existed): OAuthClients with
    an inline issuer work, the operator says what is missing, and providers work once their
    CRDs are there."""
    ns = cluster.namespace
    for crd in PROVIDER_CRDS:
        control_plane.kubectl("delete", "crd", crd, "--wait=true", "--timeout=60s")
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    with OperatorProcess(control_plane.kubeconfig_path, ns, tmp_path / "operator.log") as operator:
        operator.wait_for_log("CRDs are not installed", timeout=30)
        cluster.apply(oauth_client("inline", identity_provider.issuer, "creds"))
        cluster.wait_ready("inline", timeout=int(WAIT))
        name = f"sso-{ns}"
        cluster.apply(by_ref("app", name))
        missing = cluster.wait_not_ready("app", timeout=WAIT)
        assert missing["reason"] == "ProviderNotFound"
        assert "the ClusterOAuthProvider CRD is not installed" in missing["message"]
        assert operator.alive, operator.logs()[-3000:]

        _install_provider_crds(control_plane)
        providers.apply(
            cluster_provider(
                name, ns, issuer=identity_provider.issuer, tls={"caBundle": ca_pem(test_ca)}
            )
        )
        providers.wait(name, "True")
        cluster.wait_ready("app", timeout=int(WAIT))
        assert operator.alive
