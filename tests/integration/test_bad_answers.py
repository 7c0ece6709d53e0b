"""Bad answers from a provider, with the operator as a process and the real API server:
no hot loop, no leak into status or Events. The misbehaving token endpoint is a hand-written
loopback server (fault injection); everything else is real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.controlplane import ControlPlane
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


class BadProvider(ThreadingHTTPServer):
    answer: tuple[int, dict[str, Any]] = (200, {})
    requests = 0


class Handler(BaseHTTPRequestHandler):
    server: BadProvider

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests += 1
        status, body = self.server.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def bad_provider() -> Iterator[BadProvider]:
    server = BadProvider(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def client(name: str, provider: BadProvider) -> dict[str, Any]:
    return {
        "apiVersion": "oauth-token-operator.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "tokenEndpoint": f"http://127.0.0.1:{provider.server_address[1]}/token",
            "clientAuthentication": "client_secret_post",
            "credentialsSecretRef": {"name": "creds"},
            "refresh": {"minInterval": "0s"},
        },
    }


@pytest.fixture
def operator(
    control_plane: ControlPlane, cluster: Cluster, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        control_plane.kubeconfig_path,
        cluster.namespace,
        tmp_path / "operator.log",
        ("--propagation-margin", "0s", "--allow-http"),
    )
    with process:
        yield process


def test_a_one_second_token_is_reported_not_chased(
    cluster: Cluster, bad_provider: BadProvider, operator: OperatorProcess
) -> None:
    bad_provider.answer = (200, {"access_token": "short", "expires_in": 1})
    cluster.create_secret("creds", {"client_id": "c", "client_secret": "s3cret-value"})
    cluster.apply(client("short", bad_provider))
    ready = cluster.wait_not_ready("short")
    assert ready["reason"] == "TokenTooShortLived"
    time.sleep(12)  # a hot loop made 58 requests in 30 s; this waits for a person (slowly)
    assert bad_provider.requests == 1


def test_secrets_echoed_by_the_provider_stay_out_of_status_and_events(
    cluster: Cluster, bad_provider: BadProvider, operator: OperatorProcess
) -> None:
    bad_provider.answer = (
        400,
        {"error": "invalid_client", "error_description": "secret s3cret-value is wrong"},
    )
    cluster.create_secret("creds", {"client_id": "c", "client_secret": "s3cret-value"})
    cluster.apply(client("echo", bad_provider))
    ready = cluster.wait_not_ready("echo")
    assert ready["reason"] == "InvalidClient"
    assert "[redacted]" in ready["message"]
    seen = json.dumps(cluster.get("oauthclient", "echo")) + json.dumps(cluster.events("echo"))
    assert "s3cret-value" not in seen
    assert "s3cret-value" not in operator.logs()
