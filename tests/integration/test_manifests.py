"""The Helm chart and the plain manifests in deploy/, checked without a cluster.

These run the real helm CLI (built from Go modules by tests/helm/build.sh) so that what is
checked is what `helm install` and `kubectl apply` would see.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from oauth_token_operator.cli.main import build_parser
from tests.helm import helm_binary, run_helm
from tests.paths import CHART, CRDS, REPO
from tests.support.cached_build import BUILD_TIMEOUT

CRD = CRDS / "oauthclients.oauth-token-operator.dev.yaml"
PROVIDER_CRD = CRDS / "clusteroauthproviders.oauth-token-operator.dev.yaml"
NAMESPACED_PROVIDER_CRD = CRDS / "oauthproviders.oauth-token-operator.dev.yaml"

# The first test to need helm may compile it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUILD_TIMEOUT + 300)]

Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


def helm_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """helm without a cluster; the caller checks the answer."""
    return run_helm(None, *args, check=False, timeout=120)


def render(
    helm: Path,
    *values: str,
    namespace: str = "oauth-token-operator",
    values_file: Path | None = None,
) -> list[Manifest]:
    """`helm template` of the chart with `--set` values, parsed into manifests."""
    args = ["template", "oauth-token-operator", str(CHART), "--namespace", namespace]
    if values_file is not None:
        args += ["--values", str(values_file)]
    for value in values:
        args += ["--set", value]
    result = helm_cli(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(manifests: Iterable[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def of_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def aggregated(manifest: Manifest) -> bool:
    """A ClusterRole for users, aggregated into Kubernetes' default roles."""
    labels = manifest["metadata"].get("labels", {})
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels)


def operators(manifests: Iterable[Manifest]) -> list[Manifest]:
    """The objects that run the operator: without the users' aggregated roles."""
    return [m for m in manifests if not aggregated(m)]


def grants(role: Manifest, group: str, resource: str) -> set[str]:
    """The verbs a Role/ClusterRole grants on group/resource."""
    verbs: set[str] = set()
    for rule in role.get("rules", []):
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs.update(rule["verbs"])
    return verbs


def provider_ca_roles(manifests: list[Manifest]) -> list[Manifest]:
    return [r for r in of_kind(manifests, "Role") if r["metadata"]["name"].endswith("-provider-ca")]


def client_roles(manifests: list[Manifest]) -> list[Manifest]:
    """The Roles that serve OAuthClients in a watched namespace."""
    ca = provider_ca_roles(manifests)
    return [r for r in of_kind(manifests, "Role") if r not in ca]


# -- copies of the CRD ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("copy", "source"),
    [
        (CHART / "crds" / CRD.name, CRD),
        (REPO / "deploy" / "crd.yaml", CRD),
        (CHART / "crds" / PROVIDER_CRD.name, PROVIDER_CRD),
        (CHART / "crds" / NAMESPACED_PROVIDER_CRD.name, NAMESPACED_PROVIDER_CRD),
    ],
    ids=["chart", "deploy", "chart-providers", "chart-namespaced-providers"],
)
def test_crd_copy_is_identical_to_source(copy: Path, source: Path) -> None:
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}: run charts/sync-crd.sh"
    )


def test_deploy_holds_both_provider_crds_as_they_are() -> None:
    joined = PROVIDER_CRD.read_text() + "---\n" + NAMESPACED_PROVIDER_CRD.read_text()
    assert (REPO / "deploy" / "crd-providers.yaml").read_text() == joined, "run charts/sync-crd.sh"


def test_both_provider_kinds_take_the_same_provider_fields() -> None:
    """An OAuthProvider is a ClusterOAuthProvider for one namespace: the same fields, with
    the same schema and rules, but no namespaces or namespaceSelector."""

    def spec_of(path: Path) -> Manifest:
        (version,) = yaml.safe_load(path.read_text())["spec"]["versions"]
        schema: Manifest = version["schema"]["openAPIV3Schema"]
        return schema

    cluster, namespaced = spec_of(PROVIDER_CRD), spec_of(NAMESPACED_PROVIDER_CRD)
    cluster_fields = dict(cluster["properties"]["spec"]["properties"])
    assert cluster_fields.pop("namespaces") and cluster_fields.pop("namespaceSelector")
    assert cluster_fields == namespaced["properties"]["spec"]["properties"]
    assert cluster["properties"]["status"] == namespaced["properties"]["status"]


def test_chart_holds_only_the_operators_crds() -> None:
    # Any other file in crds/ would be installed, unversioned and never upgraded, by helm.
    names = sorted(p.name for p in (CHART / "crds").iterdir())
    assert names == sorted([CRD.name, PROVIDER_CRD.name, NAMESPACED_PROVIDER_CRD.name])


# -- lint and schema --------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["watchNamespaces={team-a,team-b}", "replicas=2"],
        ["metrics.serviceMonitor.enabled=true", "allowHttp=true", "allowedHosts={idp.example}"],
    ],
    ids=["defaults", "namespaced-peering", "monitoring"],
)
def test_helm_lint_strict(helm: Path, values: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in values:
        args += ["--set", value]
    result = helm_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("replicas=two", "/replicas"),
        ("logLevel=verbose", "/logLevel"),
        ("propagationMargin=soon", "/propagationMargin"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
        ("replica=2", "replica"),  # a typo: additionalProperties is false
    ],
)
def test_schema_rejects_bad_values(helm: Path, value: str, path: str) -> None:
    result = helm_cli("template", "x", str(CHART), "--set", value)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert path in result.stderr


# -- the default rendering --------------------------------------------------------------


def test_default_deployment_is_locked_down(helm: Path) -> None:
    manifests = render(helm)
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]

    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == only(manifests, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_default_args_and_rollout(helm: Path) -> None:
    deployment = only(render(helm), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "run",
        "--tenancy=shared",
        "--concurrency=32",
        "--propagation-margin=90s",
        "--drain-timeout=25s",
        "--health-port=8080",
        "--metrics-port=9090",
        "--log-level=info",
        "--log-format=json",
    ]
    # A drain shorter than the grace period; the pod name identifies refresh claims.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert {
        "name": "OAUTH_TOKEN_OPERATOR_IDENTITY",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in container["env"]
    assert "hostNetwork" not in pod
    # One standalone operator: never two at once, not even during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_chart_defaults_are_the_operators(helm: Path) -> None:
    """An install with no values runs as `oauth-token-operator run` with no flags would."""
    (container,) = only(render(helm), "Deployment")["spec"]["template"]["spec"]["containers"]
    parser = build_parser()
    chart, bare = parser.parse_args(container["args"]), parser.parse_args(["run"])
    options = ("concurrency", "propagation_margin", "drain_timeout", "log_level", "tenancy")
    for option in (*options, "trusted_endpoints"):
        assert getattr(chart, option) == getattr(bare, option), option


def test_args_follow_values(helm: Path) -> None:
    manifests = render(
        helm,
        "watchNamespaces={team-a,team-b}",
        "allowHttp=true",
        "allowedHosts={idp.example,login.example}",
        "tenancy=single",
        "trustedEndpoints={https://sso.example/realms/a,https://login.example/token}",
        "concurrency=4",
        "propagationMargin=2m",
        "peering.enabled=true",
        "peering.name=tokens",
        "logLevel=debug",
        "logFormat=plain",
        "healthPort=8081",
        "metrics.port=9091",
        "drainTimeout=40s",
    )
    (container,) = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "run",
        "--namespace=team-a",
        "--namespace=team-b",
        "--allow-http",
        "--allowed-hosts=idp.example,login.example",
        "--tenancy=single",
        "--trusted-endpoints=https://sso.example/realms/a,https://login.example/token",
        "--concurrency=4",
        "--propagation-margin=2m",
        "--drain-timeout=40s",
        "--peering=tokens",
        "--health-port=8081",
        "--metrics-port=9091",
        "--log-level=debug",
        "--log-format=plain",
    ]


def test_default_rbac_is_cluster_wide_and_minimal(helm: Path) -> None:
    manifests = render(helm)
    assert client_roles(manifests) == []
    role = only(operators(manifests), "ClusterRole")
    group = "oauth-token-operator.dev"
    assert grants(role, group, "oauthclients") == {"get", "list", "watch"}
    assert grants(role, group, "oauthclients/status") == {"patch", "update"}
    assert grants(role, "", "secrets") == {"get", "list", "watch", "create", "update", "patch"}
    assert grants(role, "", "events") == {"create", "patch"}
    assert grants(role, "events.k8s.io", "events") == {"create", "patch"}
    assert grants(role, "apiextensions.k8s.io", "customresourcedefinitions") == {"list", "watch"}
    assert grants(role, "", "configmaps") == {"get"}  # template values, by name
    # No wildcards anywhere, nothing on kopf peering while peering is off, nothing on
    # workloads while rollout targets are off.
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "kopf.dev" not in rule["apiGroups"]
        assert "apps" not in rule["apiGroups"]

    binding = only(manifests, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": only(manifests, "ServiceAccount")["metadata"]["name"],
            "namespace": "oauth-token-operator",
        }
    ]


def test_rollout_targets_grant_get_and_patch_on_workloads_only_when_enabled(helm: Path) -> None:
    for extra in ((), ("watchNamespaces={team-a}",)):
        manifests = operators(render(helm, "rolloutTargets.enabled=true", *extra))
        roles = client_roles(manifests) if extra else of_kind(manifests, "ClusterRole")
        assert roles
        for role in roles:
            for resource in ("deployments", "statefulsets", "daemonsets"):
                assert grants(role, "apps", resource) == {"get", "patch"}


def test_metrics_service_selects_the_pods(helm: Path) -> None:
    manifests = render(helm)
    service = only(manifests, "Service")
    pod_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert of_kind(render(helm, "metrics.enabled=false"), "Service") == []
    monitor = only(render(helm, "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_deploy_manifests_are_the_rendered_chart(helm: Path) -> None:
    """deploy/operator.yaml is exactly what charts/render-deploy.sh makes of the chart."""
    result = subprocess.run(
        [str(REPO / "charts" / "render-deploy.sh"), "-"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "HELM": str(helm)},
    )
    assert result.returncode == 0, result.stderr
    assert (REPO / "deploy" / "operator.yaml").read_text() == result.stdout, (
        "deploy/operator.yaml is stale: run charts/render-deploy.sh"
    )
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(m["kind"] for m in manifests) == [
        "ClusterRole",
        "ClusterRole",  # the users' edit, admin and view roles
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Namespace",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",  # shared tenancy, the default: trusted endpoints only
        "ValidatingAdmissionPolicyBinding",
    ]
    assert only(manifests, "Namespace")["metadata"]["name"] == "oauth-token-operator"
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    cluster_scoped |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for manifest in manifests:
        if manifest["kind"] not in cluster_scoped:
            assert manifest["metadata"]["namespace"] == "oauth-token-operator"


# -- namespaced mode and peering --------------------------------------------------------


def test_namespaced_mode_uses_roles_and_no_cluster_wide_secrets(helm: Path) -> None:
    manifests = render(helm, "watchNamespaces={a,b}")
    roles = client_roles(manifests)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    for role in roles:
        assert grants(role, "", "secrets") == {"get", "list", "watch", "create", "update", "patch"}
        assert grants(role, "oauth-token-operator.dev", "oauthclients/status") == {
            "patch",
            "update",
        }
    bindings = [
        b
        for b in of_kind(manifests, "RoleBinding")
        if not b["metadata"]["name"].endswith("-provider-ca")
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }

    # What stays cluster-wide is only what kopf's scanning reads, and the platform's
    # providers (cluster-scoped): read and watched, their status written.
    for cluster_role in of_kind(operators(manifests), "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert "secrets" not in rule["resources"], rule
            if rule["resources"] == ["clusteroauthproviders/status"]:
                assert rule["verbs"] == ["patch"], rule
                continue
            if rule["resources"] == ["namespaces"] and rule["verbs"] == ["get"]:
                continue  # the labels a provider's namespaceSelector matches
            if rule["resources"] == ["clusteroauthproviders"]:
                assert rule["verbs"] == ["get", "list", "watch"], rule
                continue
            assert set(rule["verbs"]) <= {"list", "watch"}, rule
            assert "oauthclients" not in rule["resources"], rule

    (container,) = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=a",
        "--namespace=b",
    ]


def test_namespaced_mode_reads_provider_ca_secrets_in_the_operators_namespace_only(
    helm: Path,
) -> None:
    """A ClusterOAuthProvider's CA bundle Secret is in the operator's namespace: a Role there
    reads Secrets (get only), unless that namespace is a watched one anyway."""
    (role,) = provider_ca_roles(render(helm, "watchNamespaces={a,b}"))
    assert role["metadata"]["namespace"] == "oauth-token-operator"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert provider_ca_roles(render(helm, "watchNamespaces={a,oauth-token-operator}")) == []
    assert provider_ca_roles(render(helm)) == []  # the ClusterRole reads every Secret


def test_peering_off_by_default(helm: Path) -> None:
    manifests = render(helm)
    assert of_kind(manifests, "CustomResourceDefinition") == []
    assert of_kind(manifests, "ClusterKopfPeering") == []


@pytest.mark.parametrize("values", [["replicas=2"], ["peering.enabled=true"]])
def test_peering_cluster_wide(helm: Path, values: list[str]) -> None:
    manifests = render(helm, *values)
    crds = {m["metadata"]["name"] for m in of_kind(manifests, "CustomResourceDefinition")}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for crd in of_kind(manifests, "CustomResourceDefinition"):
        # Shared by every kopf operator in the cluster: an uninstall must not delete them.
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The operator creates the peering object; a chart-owned one would be replaced (its
    # heartbeats wiped) by every upgrade.
    assert of_kind(manifests, "ClusterKopfPeering") == []
    role = only(operators(manifests), "ClusterRole")
    assert grants(role, "kopf.dev", "clusterkopfpeerings") == {
        "get",
        "list",
        "watch",
        "patch",
        "create",
    }
    deployment = only(manifests, "Deployment")
    assert "strategy" not in deployment["spec"]  # a rolling update is safe with peering
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--peering=oauth-token-operator" in container["args"]


def test_peering_namespaced(helm: Path) -> None:
    manifests = render(helm, "watchNamespaces={a,b}", "peering.enabled=true")
    assert of_kind(manifests, "KopfPeering") == of_kind(manifests, "ClusterKopfPeering") == []
    roles = client_roles(manifests)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    for role in roles:
        assert grants(role, "kopf.dev", "kopfpeerings") == {
            "get",
            "list",
            "watch",
            "patch",
            "create",
        }
    # Peering CRDs can be left to whoever installed them already.
    assert (
        of_kind(render(helm, "replicas=2", "peering.createCRDs=false"), "CustomResourceDefinition")
        == []
    )


def test_host_network_probes_loopback_and_takes_extra_env(helm: Path) -> None:
    manifests = render(
        helm,
        "hostNetwork=true",
        "extraEnv[0].name=KUBERNETES_SERVICE_HOST",
        "extraEnv[0].value=127.0.0.1",
    )
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"} in container["env"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["host"] == "127.0.0.1"


def test_host_network_replicas_roll_one_at_a_time(helm: Path) -> None:
    """A surge pod would want the host ports of the pod it replaces: with hostNetwork and
    peering the rollout replaces pods one by one instead of hanging on a Pending pod."""
    deployment = only(render(helm, "hostNetwork=true", "replicas=2"), "Deployment")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert "strategy" not in only(render(helm, "replicas=2"), "Deployment")["spec"]


def test_no_service_link_variables_in_the_operator_pod(helm: Path) -> None:
    """The metrics Service would set OAUTH_TOKEN_OPERATOR_METRICS_PORT=tcp://... in the pod
    (kubelet's Docker-link variables), which is the operator's own setting's name."""
    pod = only(render(helm), "Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def test_namespace_editors_and_viewers_get_oauthclients_through_the_default_roles(
    helm: Path,
) -> None:
    roles = {
        role["metadata"]["name"]: role
        for role in of_kind(render(helm), "ClusterRole")
        if aggregated(role)
    }
    edit, view = roles["oauth-token-operator-edit"], roles["oauth-token-operator-view"]
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert {"create", "delete", "patch", "update"} <= grants(
        edit, "oauth-token-operator.dev", "oauthclients"
    )
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert grants(view, "oauth-token-operator.dev", "oauthclients") == {"get", "list", "watch"}
    for role in (edit, view):  # users' roles never reach Secrets
        assert not any("secrets" in rule["resources"] for rule in role["rules"])
    assert not [
        r
        for r in of_kind(render(helm, "rbac.aggregateToDefaultRoles=false"), "ClusterRole")
        if aggregated(r)
    ]


def test_no_rbac_for_owner_finalizers_the_operator_never_needs(helm: Path) -> None:
    """Output Secrets' ownerReferences say blockOwnerDeletion: false (resource/secret_bodies.py), so
    the operator needs no update on oauthclients/finalizers."""
    role = only(operators(render(helm)), "ClusterRole")
    assert grants(role, "oauth-token-operator.dev", "oauthclients/finalizers") == set()


def test_a_long_release_name_keeps_every_name_within_its_limit(helm: Path) -> None:
    manifests = render(helm, f"fullnameOverride={'a' * 60}")
    service = only(manifests, "Service")
    assert len(service["metadata"]["name"]) <= 63
    assert service["metadata"]["name"].endswith("-metrics")
    for manifest in manifests:
        assert len(manifest["metadata"]["name"]) <= 253


def test_metrics_disabled_turns_the_listener_off(helm: Path) -> None:
    manifests = render(helm, "metrics.enabled=false")
    assert of_kind(manifests, "Service") == []
    (container,) = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=0" in container["args"]
    assert [p["name"] for p in container["ports"]] == ["health"]


def test_a_disruption_budget_keeps_a_replica_through_drains(helm: Path) -> None:
    assert of_kind(render(helm), "PodDisruptionBudget") == []  # one replica: nothing to keep
    budget = only(render(helm, "replicas=2"), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    deployment = only(render(helm, "replicas=2"), "Deployment")
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )


def test_extra_args_volumes_and_spread_reach_the_pod(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "extraArgs": ["--concurrency=4"],
                "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
                "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca"}],
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {
                            "matchLabels": {"app.kubernetes.io/instance": "{{ .Release.Name }}"}
                        },
                    }
                ],
            }
        )
    )
    manifests = render(helm, values_file=values)
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # After the chart's own flags, so that it wins (argparse keeps the last).
    assert container["args"][-1] == "--concurrency=4"
    assert container["args"].index("--concurrency=32") < len(container["args"]) - 1
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    assert {"name": "ca", "mountPath": "/etc/corp-ca"} in container["volumeMounts"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "oauth-token-operator"
    }


def test_security_contexts_can_be_overridden(helm: Path) -> None:
    # OpenShift's restricted-v2 SCC assigns the uid itself and refuses a fixed one.
    pod = only(
        render(helm, "podSecurityContext=null", "securityContext.runAsUser=null"),
        "Deployment",
    )["spec"]["template"]["spec"]
    assert "securityContext" not in pod
    assert "runAsUser" not in pod["containers"][0]["securityContext"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_network_policy_admits_only_metrics_scrapes(helm: Path) -> None:
    assert of_kind(render(helm), "NetworkPolicy") == []
    policy = only(
        render(
            helm,
            "networkPolicy.enabled=true",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        ),
        "NetworkPolicy",
    )
    deployment = only(render(helm), "Deployment")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == deployment["spec"]["selector"]["matchLabels"]
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress: wherever the providers are
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    # Metrics off: nothing may come in.
    closed = only(
        render(helm, "networkPolicy.enabled=true", "metrics.enabled=false"), "NetworkPolicy"
    )
    assert closed["spec"]["ingress"] == []


def test_listen_address_binds_the_listeners_and_moves_the_host_network_probes(
    helm: Path,
) -> None:
    deployment = only(render(helm, "hostNetwork=true", "listenAddress=127.0.0.1"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--listen-address=127.0.0.1" in container["args"]
    assert container["readinessProbe"]["httpGet"]["host"] == "127.0.0.1"
    default = only(render(helm), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert not any(arg.startswith("--listen-address") for arg in default["args"])


def test_helm_test_asks_the_operator_where_a_pod_can_reach_it(helm: Path) -> None:
    def url(*values: str) -> str | None:
        tests = [m for m in of_kind(render(helm, *values), "Pod")]
        if not tests:
            return None
        (test,) = tests
        assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
        return str(test["spec"]["containers"][0]["command"][-1])

    assert url() == "http://oauth-token-operator-metrics.oauth-token-operator.svc:9090/metrics"
    assert url("hostNetwork=true", "metrics.port=9191") == "http://127.0.0.1:9191/metrics"
    assert url("hostNetwork=true", "metrics.enabled=false") == "http://127.0.0.1:8080/healthz"
    assert url("metrics.enabled=false") is None  # nothing a pod could reach


def test_a_shard_release_passes_its_selector_and_needs_its_own_peering(helm: Path) -> None:
    (container,) = only(render(helm, "shardSelector=shard=a"), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    assert "--selector=shard=a" in container["args"]
    refused = helm_cli(
        "template", "x", str(CHART), "--set", "shardSelector=shard=a", "--set", "replicas=2"
    )
    assert refused.returncode != 0
    assert "set peering.name to this shard's own name" in refused.stderr
    own = render(helm, "shardSelector=shard=a", "replicas=2", "peering.name=shard-a")
    (container,) = only(own, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--peering=shard-a" in container["args"]


def test_prometheus_rule_alerts_on_the_per_client_series(helm: Path) -> None:
    assert of_kind(render(helm), "PrometheusRule") == []
    rule = only(
        render(
            helm,
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.expiringWithinMinutes=5",
        ),
        "PrometheusRule",
    )
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {
        "OAuthTokenExpiringWhileNotReady",
        "OAuthTokenRefreshFailing",
        "OAuthGrantNeedsLogin",
        "OAuthTokenOperatorFallingBehind",
    }
    assert "< 300" in alerts["OAuthTokenExpiringWhileNotReady"]["expr"]
    assert alerts["OAuthTokenRefreshFailing"]["for"] == "30m"
    # Each per-client alert names the client, from the series' own labels.
    for name, alert in alerts.items():
        if name != "OAuthTokenOperatorFallingBehind":
            assert "{{ $labels.namespace }}/{{ $labels.name }}" in alert["annotations"]["summary"]
    # The process-wide one reads a documented histogram, per pod.
    behind = alerts["OAuthTokenOperatorFallingBehind"]
    assert "oauth_token_operator_run_start_delay_seconds_bucket" in behind["expr"]
    assert behind["expr"].strip().endswith("> 30")
    assert "{{ $labels.pod }}" in behind["annotations"]["summary"]
    # The client's namespace label survives the scrape.
    monitor = only(render(helm, "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_grafana_dashboard_charts_only_series_the_operator_serves(helm: Path) -> None:
    assert of_kind(render(helm), "ConfigMap") == []
    config_map = only(render(helm, "metrics.grafanaDashboard.enabled=true"), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["oauth-token-operator.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    served = set(re.findall(r"oauth_token_operator_\w+", (REPO / "README.md").read_text()))
    for expr in exprs:
        for name in re.findall(r"oauth_token_operator_\w+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in served, f"{name} in the dashboard is not a documented metric"


def test_the_shared_tenancy_example_values_render(helm: Path) -> None:
    example = REPO / "examples" / "shared-tenancy-values.yaml"
    (container,) = only(render(helm, values_file=example), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    assert "--tenancy=shared" in container["args"]
    trusted = [a for a in container["args"] if a.startswith("--trusted-endpoints=")]
    assert trusted == [
        "--trusted-endpoints=https://sso.example.com/realms/apps,"
        "https://auth.example.com/connect/token"
    ]


@pytest.mark.parametrize("value", ["tenancy=multi", "trustedEndpoints={not-a-url}"])
def test_schema_rejects_bad_tenancy_values(helm: Path, value: str) -> None:
    result = helm_cli("template", "x", str(CHART), "--set", value)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


@pytest.mark.parametrize(
    ("values", "rendered"),
    [((), True), (("tenancy=single",), False), (("admissionPolicy.enabled=false",), False)],
)
def test_the_admission_policy_comes_with_shared_tenancy(
    helm: Path, values: tuple[str, ...], rendered: bool
) -> None:
    manifests = render(helm, *values)
    assert bool(of_kind(manifests, "ValidatingAdmissionPolicy")) is rendered
    assert bool(of_kind(manifests, "ValidatingAdmissionPolicyBinding")) is rendered


def test_the_admission_policy_follows_the_trusted_endpoints_and_namespaces(helm: Path) -> None:
    manifests = render(
        helm, "trustedEndpoints={https://a.example/,https://b.example/token}",
        "watchNamespaces={team-a,team-b}",
    )  # fmt: skip
    policy = only(manifests, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["trusted"]) == ["https://a.example", "https://b.example/token"]
    selector = policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"]
    assert selector == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]
    binding = only(manifests, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_tenants_roles_never_gain_providers(helm: Path) -> None:
    """edit/admin/view aggregation: OAuthClients, never the platform's providers; a
    namespace's own OAuthProviders only for its admins (they say where credentials go)."""
    writers = set()
    for role in of_kind(render(helm), "ClusterRole"):
        labels = role["metadata"].get("labels") or {}
        if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels):
            for rule in role["rules"]:
                assert "clusteroauthproviders" not in rule["resources"], role["metadata"]["name"]
                if "oauthproviders" in rule["resources"] and "create" in rule["verbs"]:
                    writers.add(role["metadata"]["name"])
                    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in labels
                    assert labels.get("rbac.authorization.k8s.io/aggregate-to-admin") == "true"
    assert len(writers) == 1
