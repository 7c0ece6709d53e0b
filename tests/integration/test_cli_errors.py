"""The commands people type, meeting everyday mistakes: each says in one line what is wrong
and what to do, exits non-zero, and never shows a traceback. `login` checks that it may
write the Secret before it opens a browser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.test_operator import oauth_client
from tests.support.cluster import Cluster
from tests.support.controlplane import _free_port
from tests.support.idp import CC_BASIC, CC_BASIC_SECRET, RT_POST, IdentityProvider

pytestmark = pytest.mark.integration


def run(
    kubeconfig: Path | str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oauth_token_operator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(cwd or Path.cwd())},
    )


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def kubeconfig_with(cluster: Cluster, tmp_path: Path, **context: str) -> Path:
    config = yaml.safe_load(cluster.cp.kubeconfig_path.read_text())
    for key, value in context.items():
        if key == "server":
            config["clusters"][0]["cluster"]["server"] = value
        else:
            config["contexts"][0]["context"][key] = value
    path = tmp_path / "edited.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    return _free_port()  # free: nothing listens there


# --- token -------------------------------------------------------------------------------


def test_token_uses_the_namespace_of_the_kubeconfig_context(
    cluster: Cluster, identity_provider: IdentityProvider, idp_ca_secret: str, tmp_path: Path
) -> None:
    cluster.create_secret("creds", {"client_id": CC_BASIC, "client_secret": CC_BASIC_SECRET})
    cluster.apply(oauth_client("api", identity_provider.issuer, "creds"))
    kubeconfig = kubeconfig_with(cluster, tmp_path, namespace=cluster.namespace)
    result = run(kubeconfig, "token", "api", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_token_without_a_kubeconfig(tmp_path: Path) -> None:
    one_line_error(
        run(tmp_path / "missing", "token", "api", cwd=tmp_path),
        "no usable Kubernetes configuration",
        "KUBECONFIG",
    )


def test_token_with_the_api_server_down(cluster: Cluster, tmp_path: Path, closed_port: int) -> None:
    kubeconfig = kubeconfig_with(cluster, tmp_path, server=f"https://127.0.0.1:{closed_port}")
    one_line_error(
        run(kubeconfig, "token", "api", "-n", cluster.namespace, cwd=tmp_path),
        "cannot reach the Kubernetes API server",
    )


def test_token_without_rbac(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.cp.user_kubeconfig("nobody")
    one_line_error(
        run(kubeconfig, "token", "api", "-n", cluster.namespace, cwd=tmp_path),
        "refused",
        "RBAC",
    )


def test_token_for_a_missing_client(cluster: Cluster, tmp_path: Path) -> None:
    result = run(cluster.cp.kubeconfig_path, "token", "nope", "-n", cluster.namespace)
    one_line_error(result, f"OAuthClient {cluster.namespace}/nope not found")


# --- login -------------------------------------------------------------------------------


def login_args(issuer: str, *extra: str) -> list[str]:
    return [
        "login",
        "--issuer",
        issuer,
        "--client-id",
        RT_POST,
        "--secret",
        "s",
        "--no-browser",
        *extra,
    ]


def test_login_with_a_missing_client_secret_file(cluster: Cluster, tmp_path: Path) -> None:
    missing = tmp_path / "secret.txt"
    args = login_args("https://127.0.0.1:1", "--client-secret-file", str(missing))
    one_line_error(run(cluster.cp.kubeconfig_path, *args, "-n", cluster.namespace), str(missing))


def test_login_with_a_missing_ca_file(cluster: Cluster, tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    args = login_args("https://127.0.0.1:1", "--ca-file", str(missing))
    one_line_error(run(cluster.cp.kubeconfig_path, *args, "-n", cluster.namespace), str(missing))


def test_login_with_an_unreachable_issuer(cluster: Cluster, closed_port: int) -> None:
    args = login_args(f"https://127.0.0.1:{closed_port}")
    one_line_error(
        run(cluster.cp.kubeconfig_path, *args, "-n", cluster.namespace),
        f"cannot reach https://127.0.0.1:{closed_port}/.well-known/openid-configuration",
    )


def test_login_without_the_provider_ca(
    cluster: Cluster, identity_provider: IdentityProvider
) -> None:
    one_line_error(
        run(
            cluster.cp.kubeconfig_path,
            *login_args(identity_provider.issuer),
            "-n",
            cluster.namespace,
        ),
        "not trusted",
        "--ca-file",
    )


def test_login_with_an_issuer_without_discovery(
    cluster: Cluster, identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(identity_provider.ca_pem)
    args = login_args(identity_provider.issuer + "/nothing-here", "--ca-file", str(ca))
    one_line_error(
        run(cluster.cp.kubeconfig_path, *args, "-n", cluster.namespace),
        "DiscoveryFailed",
        "is --issuer the issuer's URL?",
    )


def test_login_with_its_loopback_port_taken(
    cluster: Cluster, identity_provider: IdentityProvider, tmp_path: Path, listening_port: int
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(identity_provider.ca_pem)
    args = login_args(identity_provider.issuer, "--ca-file", str(ca), "--port", str(listening_port))
    one_line_error(
        run(cluster.cp.kubeconfig_path, *args, "-n", cluster.namespace), "port is in use"
    )


def test_login_without_rbac_stops_before_the_browser(
    cluster: Cluster, identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(identity_provider.ca_pem)
    args = login_args(identity_provider.issuer, "--ca-file", str(ca), "-n", cluster.namespace)
    result = run(cluster.cp.user_kubeconfig("nobody"), *args, cwd=tmp_path)
    one_line_error(result, "refused", "RBAC")  # and no "Open this URL": nothing was started
