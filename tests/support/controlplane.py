"""A real Kubernetes control plane for integration tests: etcd plus kube-apiserver on
loopback, started the way controller-runtime's envtest starts them.

No kube-controller-manager or scheduler runs, so nothing that a controller does happens
here: ownerReference garbage collection, namespace finalization (a deleted namespace stays
Terminating), default ServiceAccounts and their tokens, pods being scheduled. What is real
is the API itself: storage, validation (OpenAPI and CEL), admission, authentication by
client certificate and RBAC authorization.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.paths import REPO
from tests.support.cached_build import run_build
from tests.support.pki import KeyPair, TestCA
from tests.support.service import Service

_REPO = REPO
_BUILD_SCRIPT = _REPO / "tests" / "controlplane" / "build.sh"
_STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 40

_T = TypeVar("_T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message carries the log tails."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message includes kubectl's stderr, for readable failures."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}"


def _build_binaries() -> Path:
    """The directory holding kube-apiserver, etcd and kubectl, built on first use."""
    try:
        return run_build(_BUILD_SCRIPT, "controlplane-build.lock")
    except RuntimeError as exc:
        raise ControlPlaneError(str(exc)) from None


def _free_port() -> int:
    """A port that is free right now. Another process could take it before the server
    binds; that race is rare on loopback and shows up as a clear startup failure."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _service_account_key() -> bytes:
    """An RSA key for signing ServiceAccount tokens (the apiserver refuses to start
    without one); RSA because that is what a real cluster and envtest use."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _kubeconfig(server: str, ca_pem: bytes, user: str, pair: KeyPair) -> dict[str, Any]:
    """A kubeconfig with everything embedded, so it stays valid wherever it is copied."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "envtest",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pair.cert_pem),
                    "client-key-data": _b64(pair.key_pem),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "envtest", "user": user}}],
        "current-context": user,
    }


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: have the kernel SIGKILL the child if the test process dies without running
    atexit (SIGKILL, OOM), so no etcd or apiserver is ever orphaned."""
    pr_set_pdeathsig = 1
    _LIBC.prctl(pr_set_pdeathsig, signal.SIGKILL)


# Loaded in the parent so that the pre-exec hook does as little as possible in the child.
_LIBC = ctypes.CDLL(None, use_errno=True)


class ControlPlane(Service):
    """etcd and kube-apiserver on 127.0.0.1 with an admin kubeconfig.

    Use as a context manager or call start() and stop(). All state (certificates, etcd
    data, logs, kubeconfigs) lives in one temporary directory that stop() removes.
    """

    def __init__(
        self,
        *,
        startup_timeout: float = 90.0,
        service_account_admission: bool = False,
        audit: bool = False,
    ) -> None:
        self.startup_timeout = startup_timeout
        # An audit log of Secret writes: who (which user or ServiceAccount) wrote what.
        self.audit = audit
        # With a node (tests/support/node.py) pods need their ServiceAccount tokens mounted,
        # which the ServiceAccount admission plugin does once kube-controller-manager has
        # created the default ServiceAccounts.
        self.service_account_admission = service_account_admission
        self._apiserver_args: list[str] = []
        self.ca = TestCA("oauth-token-operator envtest CA")
        self._dir: Path | None = None
        self._bin_dir: Path | None = None
        self._server: str | None = None
        self._kubeconfig: Path | None = None
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self._user_configs = 0
        self.startup_seconds: float | None = None

    # -- public API ---------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """Directory holding kube-apiserver, etcd and kubectl."""
        return self._require(self._bin_dir)

    @property
    def server(self) -> str:
        """The apiserver URL, e.g. https://127.0.0.1:43117."""
        return self._require(self._server)

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig for user "admin" in group system:masters (bypasses RBAC)."""
        return self._require(self._kubeconfig)

    @property
    def ca_pem(self) -> bytes:
        """The CA that signed the apiserver's serving certificate and all client certs."""
        return self.ca.cert_pem

    @property
    def log_dir(self) -> Path:
        """Where etcd.log and kube-apiserver.log are written."""
        return self._require(self._dir)

    def start(self) -> ControlPlane:
        if self._procs:
            raise ControlPlaneError("control plane already started")
        self._bin_dir = _build_binaries()
        # Timed from here: a cold build of the binaries may take minutes on its own.
        started = time.monotonic()
        self._dir = Path(tempfile.mkdtemp(prefix="oauth-token-operator-envtest-"))
        atexit.register(self.stop)
        try:
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stops the apiserver before etcd (so it does not log a storm of etcd errors)
        and removes the temporary directory. Safe to call more than once."""
        atexit.unregister(self.stop)
        for _, proc, log in reversed(self._procs):
            self._terminate(proc)
            log.close()
        self._procs.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._server = self._kubeconfig = None

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """Writes a kubeconfig authenticating as `user` (client-cert CN) in `groups`
        (client-cert O). It gets only what RBAC grants that user or those groups."""
        directory = self._require(self._dir)
        self._user_configs += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        path = directory / f"user-{self._user_configs}-{safe}.kubeconfig"
        config = _kubeconfig(self.server, self.ca_pem, user, self.ca.client_cert(user, groups))
        self._write_private(path, yaml.safe_dump(config))
        return path

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this control plane (as admin unless `kubeconfig` is given)
        and returns the completed process with text stdout/stderr. With check=True a
        non-zero exit raises KubectlError, whose message includes stderr."""
        cmd = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig_path}",
            # Discovery cache inside the temp dir, not ~/.kube/cache, so runs never share it.
            f"--cache-dir={self.log_dir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    # -- startup ------------------------------------------------------------------------

    def _start_etcd(self) -> str:
        client_url = f"http://127.0.0.1:{_free_port()}"
        peer_url = f"http://127.0.0.1:{_free_port()}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.log_dir / 'etcd-data'}",
                "--name=envtest",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=envtest={peer_url}",
                # A throwaway store: skipping fsync makes every write much faster.
                "--unsafe-no-fsync",
            ],
        )
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        directory = self.log_dir
        pki = directory / "pki"
        ca_file = pki / "ca.crt"
        self._write_private(ca_file, self.ca_pem.decode())
        tls_cert, tls_key = self.ca.server_cert(("localhost", "127.0.0.1")).write(pki, "apiserver")
        sa_key = pki / "service-account.key"
        self._write_private(sa_key, _service_account_key().decode())
        port = _free_port()
        self._server = f"https://127.0.0.1:{port}"
        self._kubeconfig = directory / "admin.kubeconfig"
        admin = self.ca.client_cert("admin", ("system:masters",))
        admin.write(pki, "admin")
        self._write_private(
            self._kubeconfig, yaml.safe_dump(_kubeconfig(self._server, self.ca_pem, "admin", admin))
        )
        self._apiserver_args = [
            f"--etcd-servers={etcd_url}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--cert-dir={pki}",
            f"--tls-cert-file={tls_cert}",
            f"--tls-private-key-file={tls_key}",
            f"--client-ca-file={ca_file}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # The issuer is where the apiserver serves its discovery document, so that a
            # provider can fetch the JWKS from it (keyless client authentication).
            f"--service-account-issuer={self._server}",
            f"--service-account-jwks-uri={self._server}/openid/v1/jwks",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
        ]
        if not self.service_account_admission:
            # As envtest: the ServiceAccount admission plugin waits for a default
            # ServiceAccount that only kube-controller-manager would create.
            self._apiserver_args.append("--disable-admission-plugins=ServiceAccount")
        if self.audit:
            policy = directory / "audit-policy.yaml"
            policy.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "audit.k8s.io/v1",
                        "kind": "Policy",
                        "omitStages": ["RequestReceived"],
                        "rules": [
                            {
                                "level": "Metadata",
                                "verbs": ["create", "update", "patch"],
                                "resources": [{"group": "", "resources": ["secrets"]}],
                            },
                            {"level": "None"},
                        ],
                    }
                )
            )
            self._apiserver_args += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={directory / 'audit.log'}",
            ]
        self._spawn("kube-apiserver", self._apiserver_args)

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events (ControlPlane(audit=True)): Secret writes, with who."""
        path = self.log_dir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    @property
    def pki_dir(self) -> Path:
        """ca.crt, the apiserver's certificates, service-account.key, admin.crt/key."""
        return self.log_dir / "pki"

    def spawn(self, name: str, args: Sequence[str], executable: Path | None = None) -> None:
        """Starts another process of the cluster (a node component) that stop() stops, in
        reverse order, and whose log is `<log_dir>/<name>.log`."""
        self._spawn(name, args, executable)

    def stop_process(self, name: str) -> None:
        """Stops one process started by start() or spawn() (SIGTERM, then SIGKILL)."""
        for entry in list(self._procs):
            if entry[0] == name:
                self._terminate(entry[1])
                entry[2].close()
                self._procs.remove(entry)

    def restart_apiserver(self) -> None:
        """Stops kube-apiserver and starts it again on the same port over the same etcd, as
        an apiserver upgrade or crash does; returns once it is ready."""
        self.stop_apiserver()
        self.start_apiserver()

    def stop_apiserver(self) -> None:
        """Stops kube-apiserver (its port then refuses connections); start_apiserver()
        brings it back. Tests that stop it must start it again, even when they fail."""
        self.stop_process("kube-apiserver")

    def start_apiserver(self) -> None:
        self._spawn("kube-apiserver", self._apiserver_args)
        self._wait_ready(time.monotonic() + self.startup_timeout)

    def _spawn(self, name: str, args: Sequence[str], executable: Path | None = None) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        # Only the main thread: PDEATHSIG fires when the spawning *thread* exits.
        preexec = (
            _die_with_parent if threading.current_thread() is threading.main_thread() else None
        )
        proc = subprocess.Popen(
            [str(executable or self.bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Ctrl-C reaches only pytest, whose teardown then stops apiserver before etcd.
            start_new_session=True,
            preexec_fn=preexec,  # one libc call; libc was loaded in the parent
        )
        self._procs.append((name, proc, log))

    def _wait_ready(self, deadline: float) -> None:
        """Polls /readyz, then waits for the "default" namespace, which the apiserver
        creates in a post-start hook that /readyz does not wait for; tests use it at once."""
        context = self._admin_ssl_context()
        for path in ("/readyz", "/api/v1/namespaces/default"):
            last = "no answer yet"
            while True:
                self._check_alive()
                last = self._probe(path, context)
                if last == "ok":
                    break
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"GET {path} not ok after {self.startup_timeout:.0f}s (last: {last})\n"
                        + self._log_tails()
                    )
                time.sleep(0.2)

    def _probe(self, path: str, context: ssl.SSLContext) -> str:
        """Returns "ok" when the GET succeeds, else a short reason for the error message."""
        try:
            with urllib.request.urlopen(f"{self.server}{path}", context=context, timeout=5):
                return "ok"
        except urllib.error.HTTPError as err:
            return f"HTTP {err.code}: {err.read(300).decode(errors='replace')}"
        except (OSError, ssl.SSLError) as err:
            return repr(err)

    def _admin_ssl_context(self) -> ssl.SSLContext:
        pki = self.log_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        return context

    def _check_alive(self) -> None:
        for name, proc, _ in self._procs:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode} during startup\n"
                    + self._log_tails()
                )

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- last lines of {name}.log ---\n{_log_tail(self.log_dir / f'{name}.log')}"
            for name, _, _ in self._procs
        )

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_STOP_TIMEOUT)

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        """Writes a file readable only by us: kubeconfigs and keys hold private keys."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(text)

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise ControlPlaneError("control plane is not running; call start() first")
        return value
