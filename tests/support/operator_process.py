"""The operator as a separate process, as users run it: tests can kill -9 it, restart it,
and run it under a limited kubeconfig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.service import Service


class OperatorProcess(Service):
    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        tenancy: str | None = "single",
        env: dict[str, str] | None = None,
    ) -> None:
        """`tenancy`: the --tenancy flag. Most tests use inline endpoints and Secrets that
        never opted in, as single-tenant clusters do; None runs with the operator's default
        (shared), as the trust-boundary tests must."""
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra_args = extra_args
        self.tenancy = tenancy
        self.env = env or {}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        args = [
            sys.executable,
            "-m",
            "oauth_token_operator",
            "run",
            "--log-level",
            "debug",
            "--namespace",
            self.namespace,
            "--health-port",
            "0",
            "--metrics-port",
            "0",
            *(("--tenancy", self.tenancy) if self.tenancy else ()),
            *self.extra_args,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("OAUTH_TOKEN_OPERATOR_TENANCY", None)
        env.update(self.env)
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers run, as when a node dies."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, as kubelet sends it, and wait for the drain and exit; the exit code."""
        assert self._process is not None
        self._process.terminate()
        code = self._process.wait(timeout)
        self._process = None
        return code

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0, after: int = 0) -> None:
        """Waits until `text` appears in the log after byte offset `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs()[after:]:
                return
            time.sleep(0.2)
        raise AssertionError(
            f"{text!r} not logged within {timeout}s; log tail:\n" + self.logs()[-3000:]
        )
