"""A real node for end-to-end tests: the operator's image from the Dockerfile, installed
with the chart, running as a pod; application pods mounting its Secrets.

One cluster and one operator release per session (starting them costs seconds, building the
images minutes when cold); tests use namespaces of their own."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helm import run_helm
from tests.paths import CHART
from tests.support.cluster import Cluster, eventually
from tests.support.controlplane import ControlPlane, _free_port
from tests.support.idp import IdentityProvider
from tests.support.node import Node, build_image, pods
from tests.support.pki import TestCA

RELEASE = "oauth-token-operator"
OPERATOR_NS = "oauth-system"


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[tuple[ControlPlane, Node]]:
    """The cluster bare: the CRDs come from the chart's crds/ with the release's install."""
    with ControlPlane(service_account_admission=True, audit=True) as cp, Node(cp) as node:
        yield cp, node


@pytest.fixture(scope="session")
def operator_image(node_cluster: tuple[ControlPlane, Node]) -> str:
    archive, ref = build_image("operator")
    node_cluster[1].import_image(archive)
    return ref


def helm(cp: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_helm(cp.kubeconfig_path, *args, check=check)


@dataclass
class Release:
    cp: ControlPlane
    node: Node
    values: list[str]
    name: str = RELEASE

    def helm(
        self, verb: str, *extra: str, name: str | None = None, namespace: str = OPERATOR_NS
    ) -> subprocess.CompletedProcess[str]:
        # EnvVar values are strings: --set would turn a port number into an integer.
        sets = [
            arg
            for value in self.values
            for arg in ("--set-string" if value.startswith("extraEnv") else "--set", value)
        ]
        return helm(self.cp, verb, name or self.name, str(CHART), "-n", namespace, *sets, *extra)

    def uninstall(self) -> None:
        helm(self.cp, "uninstall", self.name, "-n", OPERATOR_NS, "--wait")

    @property
    def deployment(self) -> str:
        """The chart's full name: the release name, unless it lacks the chart's."""
        chart = "oauth-token-operator"
        return self.name if chart in self.name else f"{self.name}-{chart}"

    def pods(self) -> list[dict[str, Any]]:
        return pods(
            self.cp,
            OPERATOR_NS,
            f"app.kubernetes.io/name=oauth-token-operator,app.kubernetes.io/instance={self.name}",
        )

    def value(self, key: str) -> str:
        """The last value set for `key`."""
        return [v.split("=", 1)[1] for v in self.values if v.startswith(f"{key}=")][-1]

    def with_values(self, *values: str, name: str | None = None) -> Release:
        return Release(self.cp, self.node, [*self.values, *values], name or self.name)

    def wait_ready(self, timeout: int = 180) -> None:
        """The rollout done: one pod per replica, Ready, and none left terminating (a pod
        being deleted is no longer Ready, so `kubectl wait -l` would wait on it too)."""

        def settled() -> bool:
            current = self.pods()
            return bool(current) and all(
                not pod["metadata"].get("deletionTimestamp")
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in pod["status"].get("conditions", [])
                )
                for pod in current
            )

        self.cp.kubectl(
            "rollout",
            "status",
            f"deployment/{self.deployment}",
            "-n",
            OPERATOR_NS,
            f"--timeout={timeout}s",
            timeout=timeout + 10,
        )
        eventually(settled, timeout=timeout, interval=0.2, what="the operator's rollout")


@pytest.fixture(scope="session")
def release(node_cluster: tuple[ControlPlane, Node], operator_image: str) -> Iterator[Release]:
    """The chart installed as a user would. These machines allow no traffic but loopback,
    so the operator runs with hostNetwork and is given the apiserver's loopback address
    (its in-cluster config would otherwise take the kubernetes Service's ClusterIP). The
    restricted Pod Security Standard forbids hostNetwork, so this namespace only warns;
    test_node checks that hostNetwork is the pod's one departure from it, and installs the
    chart as users do (no hostNetwork) into a namespace that enforces it."""
    cp, node = node_cluster
    cp.kubectl("create", "namespace", OPERATOR_NS)
    cp.kubectl("label", "namespace", OPERATOR_NS, "pod-security.kubernetes.io/warn=restricted")
    repository, tag = operator_image.rsplit(":", 1)
    port = cp.server.rsplit(":", 1)[1]
    values = [
        f"image.repository={repository}",
        f"image.tag={tag}",
        "image.pullPolicy=Never",
        "hostNetwork=true",
        f"healthPort={_free_port()}",
        f"metrics.port={_free_port()}",
        "propagationMargin=20s",
        "rolloutTargets.enabled=true",
        # The node's clients use inline endpoints and Secrets that did not opt in.
        "tenancy=single",
        "logLevel=debug",
        "logFormat=plain",
        "extraEnv[0].name=KUBERNETES_SERVICE_HOST",
        "extraEnv[0].value=127.0.0.1",
        "extraEnv[1].name=KUBERNETES_SERVICE_PORT",
        f"extraEnv[1].value={port}",
    ]
    installed = Release(cp, node, values)
    installed.helm("install")
    installed.wait_ready()
    yield installed
    helm(cp, "uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", check=False)


@pytest.fixture(scope="session")
def e2e_ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="session")
def e2e_idp(e2e_ca: TestCA) -> Iterator[IdentityProvider]:
    """The real provider, 60 s tokens: refreshed 40 s after issue (margin 20 s)."""
    with IdentityProvider(e2e_ca, access_token_ttl=60) as idp:
        yield idp


@pytest.fixture
def app_ns(node_cluster: tuple[ControlPlane, Node], e2e_ca: TestCA) -> Cluster:
    cp, _ = node_cluster
    namespace = f"app-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", namespace)
    cluster = Cluster(cp, namespace)
    cluster.create_secret("idp-ca", {"ca.crt": e2e_ca.cert_pem.decode()})
    return cluster
