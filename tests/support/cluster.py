"""Small conveniences over kubectl for integration tests: apply dicts, read objects and
decoded Secret data, wait for conditions."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.support.controlplane import ControlPlane

T = TypeVar("T")


class Cluster:
    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.cp = control_plane
        self.namespace = namespace

    def kubectl(self, *args: str, **kwargs: Any) -> Any:
        return self.cp.kubectl(*args, **kwargs)

    def apply(self, obj: dict[str, Any]) -> None:
        obj.setdefault("metadata", {}).setdefault("namespace", self.namespace)
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        obj: dict[str, Any] = json.loads(result.stdout)
        return obj

    def secret_data(self, name: str) -> dict[str, str] | None:
        secret = self.get("secret", name)
        if secret is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def create_secret(self, name: str, data: dict[str, str]) -> None:
        self.apply(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}
        )

    def ready(self, name: str) -> dict[str, Any] | None:
        obj = self.get("oauthclient", name) or {}
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Ready":
                return dict(condition)
        return None

    def wait_ready(self, name: str, timeout: int = 60) -> dict[str, Any]:
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            f"oauthclient/{name}",
            "-n",
            self.namespace,
            f"--timeout={timeout}s",
            timeout=timeout + 10,
        )
        obj = self.get("oauthclient", name)
        assert obj is not None
        return obj

    def wait_not_ready(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Waits for Ready=False and returns the condition."""

        def failed() -> dict[str, Any] | None:
            ready = self.ready(name)
            return ready if ready and ready["status"] == "False" else None

        return eventually(failed, timeout=timeout, what=f"{name} Ready=False")

    def events(self, name: str) -> list[dict[str, Any]]:
        result = self.kubectl(
            "get",
            "events",
            "-n",
            self.namespace,
            "-o",
            "json",
            "--field-selector",
            f"involvedObject.name={name}",
        )
        items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return items


def eventually(
    check: Callable[[], T | None],
    timeout: float = 60.0,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """Polls until check() returns something truthy and returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)
