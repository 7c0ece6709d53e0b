"""The product as users meet it, on a real node: the image built from the Dockerfile, the
chart installed with helm, the operator as a pod under its ServiceAccount, RBAC and the
restricted security context, and application pods mounting the token Secret.

Each test says what it measured on stdout (`pytest -s`): propagation delay, handover."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.e2e.conftest import OPERATOR_NS, RELEASE, Release, helm
from tests.support.cluster import Cluster, eventually
from tests.support.idp import CC_POST, CC_POST_SECRET, IdentityProvider
from tests.support.node import pod_uid, pods
from tests.support.pki import TestCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def oauth_client(name: str, idp: IdentityProvider, credentials: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "issuer": idp.issuer,
            "clientAuthentication": "client_secret_post",
            "credentialsSecretRef": {"name": credentials},
            "tls": {"caBundleSecretRef": {"name": "idp-ca"}},
            **spec,
        },
    }


def task_pid(release: Release, container_id: str) -> int | None:
    """The host PID of a container's process, through containerd."""
    wanted = container_id.split("://")[-1]
    for line in release.node.ctr("tasks", "ls").stdout.splitlines()[1:]:
        task, pid, status = line.split()
        if task == wanted and status == "RUNNING":
            return int(pid)
    return None


def container_process(release: Release) -> int:
    (pod,) = release.pods()
    pid = task_pid(release, pod["status"]["containerStatuses"][0]["containerID"])
    assert pid is not None
    return pid


def assert_restricted_process(pid: int) -> None:
    """The real process: uid 65532, no capabilities, read-only root filesystem."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid_line = next(line for line in status if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65532"] * 4
    cap_eff = next(line for line in status if line.startswith("CapEff:"))
    assert int(cap_eff.split()[1], 16) == 0
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root_mount = next(line for line in mounts if line.split()[4] == "/")
    assert "ro" in root_mount.split()[5].split(",")


def test_the_chart_as_users_install_it_runs_under_the_restricted_standard(
    release: Release,
) -> None:
    """Without hostNetwork (as users install it), into a namespace that enforces the
    restricted Pod Security Standard: admitted, scheduled, started as uid 65532 with a
    read-only root and no capabilities. (Its pod network reaches only other pods here, so
    this copy cannot reach the apiserver; the functional release does.)"""
    cp = release.cp
    cp.kubectl("create", "namespace", "oauth-restricted")
    cp.kubectl(
        "label", "namespace", "oauth-restricted", "pod-security.kubernetes.io/enforce=restricted"
    )
    values = [v for v in release.values if not v.startswith("hostNetwork")]
    restricted = Release(cp, release.node, values)
    restricted.helm("install", name="restricted", namespace="oauth-restricted")
    try:

        def started() -> int | None:
            for pod in pods(cp, "oauth-restricted", "app.kubernetes.io/instance=restricted"):
                for status in pod["status"].get("containerStatuses", []):
                    if status.get("state", {}).get("running"):
                        return task_pid(release, status["containerID"])
            return None

        assert_restricted_process(eventually(started, timeout=120, what="a running operator"))
    finally:
        helm(cp, "uninstall", "restricted", "-n", "oauth-restricted", check=False)


def test_the_functional_release_departs_from_restricted_only_by_host_network(
    release: Release,
) -> None:
    """The release the other tests use needs hostNetwork (loopback is all there is here):
    the apiserver, asked to enforce restricted on its namespace, objects to that alone."""
    result = release.cp.kubectl(
        "label",
        "--dry-run=server",
        "--overwrite",
        "namespace",
        OPERATOR_NS,
        "pod-security.kubernetes.io/enforce=restricted",
    )
    # One line per pod: "Warning: <pod>: <violation>, <violation>, ..." (the details, such
    # as "(hostNetwork=true)", only when one pod is affected).
    (pod,) = release.pods()
    prefix = f"Warning: {pod['metadata']['name']}: "
    (line,) = [x for x in result.stderr.splitlines() if x.startswith(prefix)]
    violations = re.sub(r" \([^)]*\)", "", line.removeprefix(prefix)).split(", ")
    assert "host namespaces" in violations, result.stderr
    assert set(violations) <= {"host namespaces", "hostPort", "probe or lifecycle host"}, (
        result.stderr
    )


def test_the_operator_runs_as_a_pod_with_its_service_account(
    release: Release, app_ns: Cluster, e2e_idp: IdentityProvider
) -> None:
    (pod,) = release.pods()
    assert pod["status"]["phase"] == "Running"
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])  # its probes pass
    assert_restricted_process(container_process(release))

    # It authenticates with its own ServiceAccount token: the Secret it writes is written
    # by system:serviceaccount:oauth-system:oauth-token-operator in the apiserver's audit.
    app_ns.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    app_ns.apply(oauth_client("api", e2e_idp, "creds"))
    app_ns.wait_ready("api", timeout=60)
    writers = {
        e["user"]["username"]
        for e in release.cp.audit_events()
        if e.get("objectRef", {}).get("name") == "api-token"
        and e.get("objectRef", {}).get("namespace") == app_ns.namespace
    }
    assert writers == {f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}"}


def app_pod(name: str, secret: str) -> dict[str, Any]:
    """A busybox pod that mounts the token Secret (its network reaches other pods only)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534},
            "containers": [
                {
                    "name": "app",
                    "image": "APP_IMAGE",
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "while true; do sleep 1; done"],
                    "volumeMounts": [{"name": "token", "mountPath": "/var/run/token"}],
                }
            ],
            "volumes": [{"name": "token", "secret": {"secretName": secret}}],
            "terminationGracePeriodSeconds": 1,
        },
    }


@pytest.fixture
def slow_idp(e2e_ca: TestCA) -> Iterator[IdentityProvider]:
    """Three-minute tokens: room for the default 90 s renew margin."""
    with IdentityProvider(e2e_ca, access_token_ttl=180) as idp:
        yield idp


def test_a_pod_reads_the_token_and_sees_the_refresh_before_the_old_one_expires(
    release: Release, app_ns: Cluster, slow_idp: IdentityProvider
) -> None:
    """With kubelet's default syncFrequency (1 m) and the operator's default propagation
    margin (90 s, set on the client as renewBefore since the test release uses 20 s): the
    file inside the pod changes while the old token is still valid. Takes 2 to 3 minutes."""
    app_ns.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    client = oauth_client("app", slow_idp, "creds")
    client["spec"]["refresh"] = {"renewBefore": "90s"}
    app_ns.apply(client)
    app_ns.wait_ready("app", timeout=60)
    pod = app_pod("consumer", "app-token")
    pod["spec"]["containers"][0]["image"] = release.node.sandbox_image
    app_ns.apply(pod)
    app_ns.kubectl(
        "wait",
        "-n",
        app_ns.namespace,
        "--for=condition=Ready",
        "pod/consumer",
        "--timeout=120s",
        timeout=130,
    )
    mounted = release.node.volume_file(
        pod_uid(release.cp, app_ns.namespace, "consumer"), "token", "access_token"
    )
    first = (app_ns.secret_data("app-token") or {})["access_token"]
    assert mounted.read_text() == first
    first_exp = jwt.decode(first, options={"verify_signature": False})["exp"]

    # The operator refreshes at most 90 s before expiry; time when the Secret changes and
    # when the file inside the pod does.
    def secret_changed() -> str | None:
        token = (app_ns.secret_data("app-token") or {}).get("access_token")
        return token if token and token != first else None

    second = eventually(secret_changed, timeout=150, interval=0.2, what="a refreshed Secret")
    secret_at = time.time()
    eventually(
        lambda: mounted.read_text() == second,
        timeout=150,
        interval=0.2,
        what="the pod's file to change",
    )
    file_at = time.time()
    print(
        f"\nkubelet propagation: Secret updated -> file in the pod changed in "
        f"{file_at - secret_at:.1f} s (kubelet syncFrequency {release.node.sync_frequency}); "
        f"the old token had {first_exp - file_at:.1f} s left (renew margin 90 s)"
    )
    assert file_at < first_exp  # never late


def test_namespace_editors_may_manage_oauthclients_and_viewers_read_them(
    release: Release, app_ns: Cluster
) -> None:
    """The chart's roles aggregate into Kubernetes' edit/admin and view roles (by the
    controller-manager's aggregation controller), so no extra RBAC is needed per team."""
    cp, ns = release.cp, app_ns.namespace
    cp.kubectl("create", "rolebinding", "alice", "--clusterrole=edit", "--user=alice", "-n", ns)
    cp.kubectl("create", "rolebinding", "bob", "--clusterrole=view", "--user=bob", "-n", ns)

    def can(user: str, verb: str) -> bool:
        answer = cp.kubectl(
            "auth",
            "can-i",
            verb,
            "oauthclients.oauth-token-operator.dev",
            "-n",
            ns,
            f"--as={user}",
            check=False,
        )
        return bool(answer.stdout.strip() == "yes")

    eventually(lambda: can("alice", "create"), timeout=30, what="edit to include OAuthClients")
    assert can("alice", "delete") and can("bob", "list")
    assert not can("bob", "create")


def test_helm_test_finds_the_operator_answering(release: Release) -> None:
    """`helm test` runs the chart's test pod (the operator's image) against the running
    release; it fails unless the operator serves its metrics."""
    result = helm(
        release.cp, "test", release.name, "-n", OPERATOR_NS, "--timeout=120s", check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Phase:          Succeeded" in result.stdout, result.stdout


def env_deployment(name: str, image: str, secret: str) -> dict[str, Any]:
    """Reads the token from an environment variable, i.e. only at start; logs its hash."""
    labels = {"app": name}
    script = 'echo "token sha256 $(printf %s "$TOKEN" | sha256sum)"; while true; do sleep 1; done'
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534},
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script],
                            "env": [
                                {
                                    "name": "TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": secret, "key": "access_token"}
                                    },
                                }
                            ],
                        }
                    ],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def test_a_deployment_reading_the_token_from_env_is_restarted_with_each_new_token(
    release: Release, app_ns: Cluster, e2e_idp: IdentityProvider
) -> None:
    """spec.rolloutTargets on the node: the Deployment exists before its Secret (pods wait),
    the first token restarts it, and every refreshed token (60 s tokens, renewed 20 s before
    expiry) brings up a pod whose environment holds the new token before the old expires."""
    app_ns.create_secret("creds", {"client_id": CC_POST, "client_secret": CC_POST_SECRET})
    app_ns.apply(env_deployment("env-app", release.node.sandbox_image, "env-token"))
    client = oauth_client("env", e2e_idp, "creds")
    client["spec"]["secret"] = {"name": "env-token"}
    client["spec"]["rolloutTargets"] = [{"kind": "Deployment", "name": "env-app"}]
    app_ns.apply(client)
    app_ns.wait_ready("env", timeout=60)

    def running_with(token: str) -> str | None:
        """The name of a Ready pod whose environment holds this token."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        for pod in pods(release.cp, app_ns.namespace, "app=env-app"):
            name = pod["metadata"]["name"]
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod["status"].get("conditions", [])
            )
            log = release.node.container_log(app_ns.namespace, name, "app")
            if ready and f"token sha256 {digest}" in log:
                return str(name)
        return None

    first = (app_ns.secret_data("env-token") or {})["access_token"]
    eventually(lambda: running_with(first), timeout=90, interval=0.5, what="a pod with token 1")

    def refreshed() -> str | None:
        token = (app_ns.secret_data("env-token") or {}).get("access_token")
        return token if token and token != first else None

    second = eventually(refreshed, timeout=90, interval=0.2, what="a refreshed token")
    written_at = time.time()
    eventually(lambda: running_with(second), timeout=60, interval=0.2, what="a pod with token 2")
    running_at = time.time()
    first_exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    print(
        f"\nrollout restart: token written -> a pod with it Ready in "
        f"{running_at - written_at:.1f} s; the old token had {first_exp - running_at:.1f} s "
        "left"
    )
    assert running_at < first_exp
    restarted = [e for e in app_ns.events("env") if e["reason"] == "RolloutRestarted"]
    assert len(restarted) >= 2
