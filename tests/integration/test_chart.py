"""The Helm chart installed into a real kube-apiserver, and its RBAC checked there.

No pods run (the test control plane has no scheduler or kubelet), so this checks what
the API server itself decides: that `helm install` succeeds, that the objects and the CRD
exist, and that the chart's service account may do exactly what the operator does, asked
of the RBAC authorizer by impersonation (`kubectl auth can-i --as=...`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from tests.helm import helm_binary, run_helm
from tests.paths import CHART
from tests.support.cached_build import BUILD_TIMEOUT
from tests.support.cluster import eventually
from tests.support.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUILD_TIMEOUT + 300)]

CRD_NAME = "oauthclients.oauth-token-operator.dev"
OAUTHCLIENTS = "oauthclients.oauth-token-operator.dev"
PROVIDERS = "clusteroauthproviders.oauth-token-operator.dev"
NAMESPACED_PROVIDERS = "oauthproviders.oauth-token-operator.dev"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    fullname: str  # name of the Deployment, ServiceAccount, ClusterRole, ...

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"


def helm(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return run_helm(cp.kubeconfig_path, *args, timeout=180)


def install(cp: ControlPlane, name: str, namespace: str, *values: str) -> Iterator[Release]:
    """helm install (no --wait: no pod can become ready here), then uninstall afterwards.
    Namespaces are left behind: without kube-controller-manager they never finish
    terminating, and leaving them costs nothing."""
    args = ["install", name, str(CHART), "--namespace", namespace, "--create-namespace"]
    for value in values:
        args += ["--set", value]
    helm(cp, *args)
    try:
        yield Release(name, namespace, f"{name}-oauth-token-operator")
    finally:
        helm(cp, "uninstall", name, "--namespace", namespace)
        # The apiserver drops a deleted admission policy moments later: until then it would
        # refuse the next modules' OAuthClients, whose endpoints no release trusts.
        policy = f"{name}-oauth-token-operator-trusted-endpoints"
        eventually(
            lambda: not refused_by(cp, policy),
            timeout=30,
            interval=0.2,
            what=f"the admission policy {policy} dropped",
        )


def refused_by(cp: ControlPlane, policy: str) -> bool:
    """Whether admission policy `policy` refuses an OAuthClient with an endpoint nobody
    trusts (a server-side dry run)."""
    client = {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": "policy-probe", "namespace": "default"},
        "spec": {
            "tokenEndpoint": "https://127.0.0.1:9/probe",
            "credentialsSecretRef": {"name": "x"},
        },
    }
    probe = cp.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(client), check=False
    )
    return probe.returncode != 0 and f"ValidatingAdmissionPolicy '{policy}'" in probe.stderr


@pytest.fixture(scope="module")
def cluster_wide(control_plane: ControlPlane) -> Iterator[Release]:
    """The chart with default values (what deploy/operator.yaml holds), under a release
    name of its own so that its cluster-scoped objects collide with no other test."""
    yield from install(control_plane, "chart-test", "chart-test")


@pytest.fixture(scope="module")
def namespaced(control_plane: ControlPlane) -> Iterator[Release]:
    """The chart watching two namespaces, with kopf peering."""
    for ns in ("chart-team-a", "chart-team-b", "chart-team-c"):
        control_plane.kubectl("create", "namespace", ns)
    yield from install(
        control_plane,
        "chart-ns",
        "chart-ns",
        "watchNamespaces={chart-team-a,chart-team-b}",
        "peering.enabled=true",
        "peering.name=chart-ns",
    )


def can_i(
    cp: ControlPlane,
    release: Release,
    verb: str,
    resource: str,
    *,
    namespace: str | None = None,
    subresource: str | None = None,
) -> bool:
    """Asks the API server's authorizer whether the release's service account may do this.
    `kubectl auth can-i` exits 0 for yes and 1 for no."""
    args = ["auth", "can-i", verb, resource, f"--as={release.service_account}"]
    args.append(f"--namespace={namespace}" if namespace else "--all-namespaces")
    if subresource:
        args.append(f"--subresource={subresource}")
    result = cp.kubectl(*args, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def test_install_creates_crd_and_objects(
    control_plane: ControlPlane, cluster_wide: Release
) -> None:
    cp, r = control_plane, cluster_wide
    # The CRD from the chart's crds/ directory is served: the API knows the kind.
    cp.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    resources = cp.kubectl("api-resources", "--api-group=oauth-token-operator.dev", "-o=name")
    assert resources.stdout.split() == [PROVIDERS, OAUTHCLIENTS, NAMESPACED_PROVIDERS]
    for kind in ("deployment", "serviceaccount", "service"):
        name = f"{r.fullname}-metrics" if kind == "service" else r.fullname
        cp.kubectl("get", kind, name, f"--namespace={r.namespace}")
    cp.kubectl("get", "clusterrole", r.fullname)
    cp.kubectl("get", "clusterrolebinding", r.fullname)
    status = helm(cp, "status", r.name, f"--namespace={r.namespace}")
    assert "STATUS: deployed" in status.stdout


# What the operator does, in any namespace (cluster-wide mode): (verb, resource, subresource).
ALLOWED = [
    ("get", OAUTHCLIENTS, None),
    ("list", OAUTHCLIENTS, None),
    ("watch", OAUTHCLIENTS, None),
    ("patch", OAUTHCLIENTS, "status"),
    ("update", OAUTHCLIENTS, "status"),
    ("get", "secrets", None),
    ("list", "secrets", None),
    ("watch", "secrets", None),
    ("create", "secrets", None),
    ("update", "secrets", None),
    ("patch", "secrets", None),
    ("create", "events", None),
    ("patch", "events", None),
    ("create", "events.events.k8s.io", None),
]
# What it must not be able to do.
DENIED = [
    ("patch", OAUTHCLIENTS, None),  # the spec belongs to users
    ("update", OAUTHCLIENTS, None),
    ("create", OAUTHCLIENTS, None),
    ("delete", OAUTHCLIENTS, None),
    ("delete", "secrets", None),  # garbage collection removes owned Secrets
    ("deletecollection", "secrets", None),
    ("create", "pods", None),
    ("create", "pods", "exec"),
    ("list", "configmaps", None),  # read by name only (template values)
    ("watch", "configmaps", None),
    ("patch", "deployments.apps", None),  # rolloutTargets.enabled is off by default
    ("create", "serviceaccounts", "token"),
    ("create", "rolebindings.rbac.authorization.k8s.io", None),
    ("delete", "events", None),
]


@pytest.mark.parametrize(("verb", "resource", "subresource"), ALLOWED)
def test_cluster_wide_rbac_allows(
    control_plane: ControlPlane,
    cluster_wide: Release,
    verb: str,
    resource: str,
    subresource: str | None,
) -> None:
    assert can_i(control_plane, cluster_wide, verb, resource, subresource=subresource)
    assert can_i(
        control_plane, cluster_wide, verb, resource, namespace="default", subresource=subresource
    )


@pytest.mark.parametrize(("verb", "resource", "subresource"), DENIED)
def test_cluster_wide_rbac_denies(
    control_plane: ControlPlane,
    cluster_wide: Release,
    verb: str,
    resource: str,
    subresource: str | None,
) -> None:
    assert not can_i(
        control_plane, cluster_wide, verb, resource, namespace="default", subresource=subresource
    )


def test_cluster_wide_rbac_is_exactly_what_the_operator_does(
    control_plane: ControlPlane, cluster_wide: Release
) -> None:
    """Everything the service account may do on resources, as the API server lists it,
    less what every authenticated user may do (self-reviews, discovery URLs)."""
    listing = control_plane.kubectl(
        "auth", "can-i", "--list", f"--as={cluster_wide.service_account}", "--namespace=default"
    )
    granted: dict[str, set[str]] = {}
    for line in listing.stdout.splitlines()[1:]:
        if line.startswith(" "):  # a non-resource URL row (no resource column)
            continue
        resource = line.split()[0]
        verbs = line[line.rindex("[") + 1 : line.rindex("]")].split()
        if not resource.startswith("selfsubject"):
            granted.setdefault(resource, set()).update(verbs)
    assert granted == {
        OAUTHCLIENTS: {"get", "list", "watch"},
        f"{OAUTHCLIENTS}/status": {"patch", "update"},
        "secrets": {"get", "list", "watch", "create", "update", "patch"},
        "events": {"create", "patch"},
        "events.events.k8s.io": {"create", "patch"},
        "customresourcedefinitions.apiextensions.k8s.io": {"list", "watch"},
        "configmaps": {"get"},
        # spec.providerRef: the providers, watched, and their status reported.
        PROVIDERS: {"get", "list", "watch"},
        f"{PROVIDERS}/status": {"patch"},
        NAMESPACED_PROVIDERS: {"get", "list", "watch"},
        f"{NAMESPACED_PROVIDERS}/status": {"patch"},
        "namespaces": {"get"},  # the labels a provider's namespaceSelector matches
    }


def test_cluster_wide_rbac_on_cluster_scoped_resources(
    control_plane: ControlPlane, cluster_wide: Release
) -> None:
    cp, r = control_plane, cluster_wide
    crds = "customresourcedefinitions.apiextensions.k8s.io"
    assert can_i(cp, r, "list", crds) and can_i(cp, r, "watch", crds)
    for verb in ("create", "patch", "delete"):
        assert not can_i(cp, r, verb, crds)
    assert not can_i(cp, r, "create", "namespaces")
    assert not can_i(cp, r, "create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert not can_i(cp, r, "impersonate", "users")
    # Peering is off by default: no access to kopf's peering objects.
    assert not can_i(cp, r, "patch", "clusterkopfpeerings.kopf.dev")


def test_namespaced_rbac_stays_in_the_listed_namespaces(
    control_plane: ControlPlane, namespaced: Release
) -> None:
    cp, r = control_plane, namespaced
    for ns in ("chart-team-a", "chart-team-b"):
        assert can_i(cp, r, "watch", OAUTHCLIENTS, namespace=ns)
        assert can_i(cp, r, "patch", OAUTHCLIENTS, namespace=ns, subresource="status")
        assert can_i(cp, r, "create", "secrets", namespace=ns)
        assert can_i(cp, r, "create", "events", namespace=ns)
        assert can_i(cp, r, "patch", "kopfpeerings.kopf.dev", namespace=ns)
        assert not can_i(cp, r, "delete", "secrets", namespace=ns)
        assert not can_i(cp, r, "patch", OAUTHCLIENTS, namespace=ns)
    # Not in a namespace it does not watch, nor across all namespaces; in its own, only a
    # read of a Secret by name (a ClusterOAuthProvider's CA bundle).
    for ns in ("chart-team-c", r.namespace, "default"):
        assert can_i(cp, r, "get", "secrets", namespace=ns) is (ns == r.namespace)
        assert not can_i(cp, r, "list", "secrets", namespace=ns)
        assert not can_i(cp, r, "list", OAUTHCLIENTS, namespace=ns)
    assert not can_i(cp, r, "list", "secrets")
    assert not can_i(cp, r, "watch", OAUTHCLIENTS)
    # Only kopf's scanning reads, the providers and namespaces' labels are cluster-wide.
    assert can_i(cp, r, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(cp, r, "watch", "namespaces")
    assert can_i(cp, r, "get", "namespaces")
    assert can_i(cp, r, "watch", PROVIDERS)
    assert not can_i(cp, r, "create", PROVIDERS)


def test_peering_crds_are_installed_and_no_peering_object_is_templated(
    control_plane: ControlPlane, namespaced: Release
) -> None:
    """The peering CRDs come with the release; the peering objects are the operator's to
    create (an upgrade must never replace them and wipe the replicas' heartbeats)."""
    cp = control_plane
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        cp.kubectl("get", "crd", crd)
    helm(
        cp,
        "upgrade",
        namespaced.name,
        str(CHART),
        f"--namespace={namespaced.namespace}",
        "--reuse-values",
    )
    for ns in ("chart-team-a", "chart-team-b"):
        assert can_i(cp, namespaced, "create", "kopfpeerings.kopf.dev", namespace=ns)
        listed = cp.kubectl("get", "kopfpeerings.kopf.dev", f"--namespace={ns}", "-o=name")
        assert listed.stdout.split() == []


def test_pod_passes_restricted_pod_security(control_plane: ControlPlane) -> None:
    """The API server's Pod Security admission accepts the chart's pod in a namespace that
    enforces the "restricted" standard. (A Deployment is only warned about; a Pod is
    enforced, so the Deployment's pod template is submitted as a Pod, server-side dry run.)"""
    cp = control_plane
    ns = "chart-restricted"
    cp.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
        ),
    )
    rendered = subprocess.run(
        [str(helm_binary()), "template", "psa", str(CHART), f"--namespace={ns}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    (deployment,) = [
        doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment"
    ]
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "psa-check", "namespace": ns, **template["metadata"]},
        "spec": template["spec"],
    }
    # The ServiceAccount need not exist: its admission plugin is off in the test control plane.
    result = cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode == 0, result.stderr
    assert "violate" not in result.stderr, result.stderr

    # And the check is real: a pod that drops the hardening is refused.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = cp.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr


def test_network_policy_and_helm_test_pod_are_admitted(control_plane: ControlPlane) -> None:
    """The optional NetworkPolicy is valid to the API server, and the `helm test` pod meets
    the restricted Pod Security Standard like the operator's own pod."""
    cp = control_plane
    ns = "chart-restricted-test"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    rendered = subprocess.run(
        [
            str(helm_binary()),
            "template",
            "psa",
            str(CHART),
            f"--namespace={ns}",
            "--set=networkPolicy.enabled=true",
            "--set=networkPolicy.metricsFrom[0].podSelector.matchLabels.app=prometheus",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    wanted = [
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] in ("NetworkPolicy", "Pod")
    ]
    assert sorted(doc["kind"] for doc in wanted) == ["NetworkPolicy", "Pod"]
    for doc in wanted:
        result = cp.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False
        )
        assert result.returncode == 0, result.stderr
        assert "violate" not in result.stderr, result.stderr
