"""A real node for end-to-end tests, in the place of a kind node (which needs a Docker engine
and node images from a registry, neither of which exists on these machines).

Beside the control plane's etcd and kube-apiserver: kube-controller-manager (garbage
collector, ServiceAccounts and their tokens, the root CA ConfigMap, Deployments,
ReplicaSets, namespaces, PodDisruptionBudgets, pod and node lifecycle), kube-scheduler and
kubelet, all from the
Kubernetes Go module pinned in tests/controlplane; containerd, runc and the CNI plugins from
Debian's packages. containerd runs from its own root, state and socket under the test's
temporary directory; images come from OCI archives built by scripts/build-image and pods
use `imagePullPolicy: Never`.

Network: everything listens on 127.0.0.1. The node has no address (kubelet refuses
`--node-ip=127.0.0.1` for its status), so nothing ever dials a node address: no `kubectl
logs/exec`; pod files are read through the kubelet's volume directories and container logs
from the kubelet's pod log directory. A pod that is not `hostNetwork` gets an address on a
bridge of this node's own that has no host address, no gateway and no masquerade: it can
reach other pods and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.paths import REPO
from tests.support.controlplane import ControlPlane, ControlPlaneError, _free_port
from tests.support.service import Service

_REPO = REPO
_DEBIAN_PACKAGES = "containerd runc containernetworking-plugins buildah mmdebstrap busybox-static"
_CNI_BIN = Path("/usr/lib/cni")
NODE_NAME = "node-1"


def require_tools() -> None:
    """Fails with what to install, not with a traceback from deep inside a fixture."""
    missing = [t for t in ("containerd", "runc", "ctr", "buildah") if not shutil.which(t)]
    if not all((_CNI_BIN / plugin).exists() for plugin in ("bridge", "host-local")):
        missing.append("CNI plugins in /usr/lib/cni")
    if missing:
        raise ControlPlaneError(
            f"the node needs {', '.join(missing)}: run scripts/setup "
            f"(Debian: apt-get install {_DEBIAN_PACKAGES})"
        )


def build_image(what: str) -> tuple[Path, str]:
    """(OCI archive, image reference) from scripts/build-image, cached across runs."""
    result = subprocess.run(
        [str(_REPO / "scripts" / "build-image"), what],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"scripts/build-image {what} failed:\n{result.stderr[-3000:]}")
    archive, ref = result.stdout.split()[-2:]
    return Path(archive), ref


class Node(Service):
    """kube-controller-manager, kube-scheduler, containerd and kubelet for a ControlPlane
    started with `service_account_admission=True`. Use as a context manager."""

    def __init__(self, control_plane: ControlPlane, *, sync_frequency: str = "1m") -> None:
        # kubelet's own default: Secret volumes propagate as slowly as on users' nodes.
        self.cp = control_plane
        self.sync_frequency = sync_frequency
        self.dir = Path(tempfile.mkdtemp(prefix="oauth-token-operator-node-"))
        self.socket = self.dir / "containerd" / "containerd.sock"
        self.kubelet_root = self.dir / "kubelet"
        self.pod_logs = self.dir / "pod-logs"
        self.sandbox_image = ""
        self.bridge = f"otoe{uuid.uuid4().hex[:8]}"  # the pods' bridge (15 characters at most)
        self._netns_before: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Node:
        require_tools()
        self._netns_before = set(_pod_netns())
        busybox, self.sandbox_image = build_image("busybox")
        try:
            self._start_controller_manager()
            self._start_scheduler()
            self._start_containerd()
            self.import_image(busybox)
            self._start_kubelet()
            self._wait_node_ready(120)
            self._wait_default_service_account(60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Deletes every pod's containers, stops kubelet and containerd, kills the shims and
        unmounts what they left, then checks that nothing is left behind."""
        self.cp.stop_process("kubelet")
        if self.socket.exists():
            self._remove_all_containers()
        self.cp.stop_process("containerd")
        self._kill_shims()
        self._unmount_all()
        # Containers removed without the CRI's StopPodSandbox leave their pods' network
        # namespaces (named by containerd's CNI); the ones that appeared since the start go.
        for name in set(_pod_netns()) - self._netns_before:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        leftovers = self.mounts() + [str(pid) for pid in self._shim_pids()]
        leftovers += [f"netns {n}" for n in set(_pod_netns()) - self._netns_before]
        if Path(f"/sys/class/net/{self.bridge}").exists():
            leftovers.append(f"bridge {self.bridge}")
        shutil.rmtree(self.dir, ignore_errors=True)
        if leftovers:
            raise ControlPlaneError(f"the node left behind: {leftovers}")

    # -- what tests use -------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", "--no-unpack=false", str(archive))

    def volume_file(self, pod_uid: str, volume: str, key: str) -> Path:
        """Where kubelet materialises a Secret volume's key for a pod: what the pod reads."""
        return (
            self.kubelet_root / "pods" / pod_uid / "volumes" / "kubernetes.io~secret" / volume / key
        )

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """The container's stdout/stderr as kubelet keeps it (all restarts, oldest first)."""
        texts = []
        for directory in sorted(self.pod_logs.glob(f"{namespace}_{pod}_*/{container}")):
            for log in sorted(directory.glob("*.log"), key=lambda p: int(p.stem)):
                texts.append(log.read_text(errors="replace"))
        return "".join(texts)

    def mounts(self) -> list[str]:
        prefix = str(self.dir)
        with open("/proc/self/mountinfo") as info:
            return [line.split()[4] for line in info if line.split()[4].startswith(prefix)]

    # -- components -----------------------------------------------------------------------

    def _kubeconfig_args(self) -> list[str]:
        kubeconfig = str(self.cp.kubeconfig_path)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ]

    def _start_controller_manager(self) -> None:
        pki = self.cp.pki_dir
        controllers = (
            "garbage-collector-controller,serviceaccount-controller,"
            "serviceaccount-token-controller,root-ca-certificate-publisher-controller,"
            "deployment-controller,replicaset-controller,namespace-controller,"
            "disruption-controller,pod-garbage-collector-controller,"
            "clusterrole-aggregation-controller,"
            # Lifts the not-ready taint kubelet registers the node with, once it is Ready.
            "node-lifecycle-controller"
        )
        self.cp.spawn(
            "kube-controller-manager",
            [
                *self._kubeconfig_args(),
                "--bind-address=127.0.0.1",
                f"--secure-port={_free_port()}",
                f"--controllers={controllers}",
                f"--service-account-private-key-file={pki / 'service-account.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                f"--cert-dir={self.dir / 'kcm-certs'}",
                # Garbage collection and rollouts within seconds, not the defaults' minutes.
                "--concurrent-gc-syncs=5",
            ],
        )

    def _start_scheduler(self) -> None:
        self.cp.spawn(
            "kube-scheduler",
            [
                *self._kubeconfig_args(),
                "--bind-address=127.0.0.1",
                f"--secure-port={_free_port()}",
                "--leader-elect=false",
                f"--cert-dir={self.dir / 'scheduler-certs'}",
            ],
        )

    def _start_containerd(self) -> None:
        cni_conf = self.dir / "cni"
        cni_conf.mkdir(parents=True)
        # Pods that are not hostNetwork need an address (containerd's CRI refuses a sandbox
        # without one), but no traffic may leave the namespaces the tests create: a bridge
        # of this node's own with no address on the host side, no gateway, no masquerade
        # and so no route anywhere. Pods reach each other and nothing else.
        (cni_conf / "10-isolated.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "isolated",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": self.bridge,
                            "isGateway": False,
                            "isDefaultGateway": False,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": "10.250.0.0/24"}]],
                                "dataDir": str(self.dir / "cni-ipam"),
                            },
                        }
                    ],
                }
            )
        )
        config = self.dir / "containerd.toml"
        config.write_text(
            f"""version = 2
root = "{self.dir / "containerd" / "root"}"
state = "{self.dir / "containerd" / "state"}"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.sandbox_image}"
  # root without CAP_SYS_RESOURCE cannot give the sandbox a negative OOM score
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{_CNI_BIN}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
"""
        )
        self.cp.spawn("containerd", [f"--config={config}"], Path(shutil.which("containerd") or ""))
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ControlPlaneError("containerd did not answer on its socket within 30 s")
            time.sleep(0.2)

    def _start_kubelet(self) -> None:
        pki = self.cp.pki_dir
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": _free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": _free_port(),
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(self.pod_logs),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # These machines: cgroup v1, root without CAP_SYS_RESOURCE (node-notes).
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "localStorageCapacityIsolation": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi"},
            "makeIPTablesUtilChains": False,
            "syncFrequency": self.sync_frequency,
            "serializeImagePulls": False,
            "maxPods": 30,
            "registerNode": True,
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        self.cp.spawn(
            "kubelet",
            [
                f"--config={path}",
                f"--kubeconfig={self.cp.kubeconfig_path}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.dir / 'kubelet-certs'}",
                f"--hostname-override={NODE_NAME}",
                # Refused for the node's status (loopback), so the node has no address and
                # nothing dials one; still the only address kubelet may pick.
                "--node-ip=127.0.0.1",
                "--v=1",
            ],
        )

    def _wait_node_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = self.cp.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if result.returncode == 0:
                node = json.loads(result.stdout)
                conditions = node["status"].get("conditions", [])
                ready = [c for c in conditions if c["type"] == "Ready"]
                taints = node["spec"].get("taints", [])
                if ready and ready[0]["status"] == "True" and not taints:
                    return
                last = json.dumps({"ready": ready, "taints": taints})
            time.sleep(0.5)
        tail = (self.cp.log_dir / "kubelet.log").read_text(errors="replace")[-4000:]
        raise ControlPlaneError(f"node not Ready after {timeout:.0f}s ({last}); kubelet:\n{tail}")

    def _wait_default_service_account(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.cp.kubectl("get", "sa", "default", "-n", "default", check=False).returncode:
            if time.monotonic() > deadline:
                raise ControlPlaneError("kube-controller-manager created no ServiceAccounts")
            time.sleep(0.5)

    # -- teardown -------------------------------------------------------------------------

    def _remove_all_containers(self) -> None:
        for _ in range(3):
            tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            for task in tasks:
                self.ctr("tasks", "rm", "-f", task, check=False)
            containers = self.ctr("containers", "ls", "-q", check=False).stdout.split()
            for container in containers:
                self.ctr("containers", "rm", container, check=False)
            if not tasks and not containers:
                return
            time.sleep(0.5)

    def _shim_pids(self) -> list[int]:
        pids = []
        needle = str(self.socket)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "containerd-shim" in cmdline and needle in cmdline:
                    pids.append(int(entry.name))
        return pids

    def _kill_shims(self) -> None:
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self._shim_pids() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _unmount_all(self) -> None:
        # Deepest first: volumes inside pod directories, then overlay roots, then shm.
        for mount in sorted(set(self.mounts()), key=lambda m: -len(m)):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def _pod_netns() -> list[str]:
    """The network namespaces containerd's CNI made for pods (/run/netns/cni-...)."""
    with contextlib.suppress(FileNotFoundError):
        return [n.name for n in Path("/run/netns").iterdir() if n.name.startswith("cni-")]
    return []


def pod_uid(cp: ControlPlane, namespace: str, name: str) -> str:
    pod = json.loads(cp.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
    return str(pod["metadata"]["uid"])


def pods(cp: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    result = cp.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items
