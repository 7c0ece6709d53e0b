"""Runs the operator's CLI commands as a user would, for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.cluster import Cluster
from tests.support.idp import IdentityProvider, complete_login


def cli(
    cluster: Cluster, *args: str, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`oauth-token-operator ARGS` with the admin kubeconfig (`env`: more variables)."""
    return subprocess.run(
        [sys.executable, "-m", "oauth_token_operator", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(cluster.cp.kubeconfig_path), **(env or {})},
    )


def login(
    cluster: Cluster,
    idp: IdentityProvider,
    tmp_path: Path,
    secret: str | None,
    client_id: str,
    client_secret: str | None = None,
    source: tuple[str, ...] | None = None,
    scopes: tuple[str, ...] = ("openid", "offline_access"),
) -> subprocess.CompletedProcess[str]:
    """Runs `login` and plays the browser through the provider's dev interactions: the
    authorize URL the CLI prints is followed, the login and consent forms are submitted, and
    the provider's redirect is delivered to the CLI's loopback listener. `source`: where the
    issuer and CA come from (default: --issuer and --ca-file); `secret` None: no --secret."""
    if source is None:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(idp.ca_pem)
        source = ("--issuer", idp.issuer, "--ca-file", str(ca_file))
    args = ["login", *source, "--client-id", client_id]
    if client_secret is not None:
        secret_file = tmp_path / "client-secret"
        secret_file.write_text(client_secret)
        args += ["--client-secret-file", str(secret_file)]
    for scope in scopes:
        args += ["--scope", scope]
    args += ["--param", "sub_type=user", "--no-browser", "-n", cluster.namespace]
    if secret is not None:
        args += ["--secret", secret]
    process = subprocess.Popen(
        [sys.executable, "-m", "oauth_token_operator", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": str(cluster.cp.kubeconfig_path)},
    )
    assert process.stderr is not None
    printed = []
    url = ""
    while not url.startswith("http"):
        url = process.stderr.readline().strip()
        printed.append(url)
        assert url or process.poll() is None, "login exited early:\n" + "\n".join(printed)
    with idp.http_client() as browser:
        callback = complete_login(url, browser)
    assert callback.startswith("http://127.0.0.1:")
    assert httpx.get(callback).status_code == 200  # the CLI's loopback listener
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(
        process.args, process.returncode, stdout, "\n".join(printed) + "\n" + stderr
    )
