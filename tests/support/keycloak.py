"""Keycloak on loopback over https, for keyless client authentication: its Kubernetes
identity provider trusts the test apiserver's ServiceAccount issuer, and a client with
federated JWT authentication accepts that ServiceAccount's tokens as client assertions.
(Why Keycloak and not oidc-provider: tests/keycloak/install.sh.)"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.paths import REPO
from tests.support.controlplane import _free_port
from tests.support.pki import TestCA
from tests.support.service import Service

_READY_TIMEOUT = 120.0
REALM = "apps"
IDP_ALIAS = "cluster"


def install() -> Path:
    """The Keycloak home (installed and pre-built once per cache)."""
    out = subprocess.run(
        [REPO / "tests" / "keycloak" / "install.sh"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


class Keycloak(Service):
    def __init__(self, ca: TestCA, apiserver_ca: bytes, apiserver_issuer: str) -> None:
        self._ca = ca
        self._apiserver_ca = apiserver_ca
        self.apiserver_issuer = apiserver_issuer
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._password = secrets.token_urlsafe(16)
        self.base = ""

    @property
    def issuer(self) -> str:
        """The realm's issuer: what a client assertion's audience must be."""
        return f"{self.base}/realms/{REALM}"

    def start(self) -> Keycloak:
        home = install()
        java_home = subprocess.run(
            [REPO / "tests" / "keycloak" / "java-home.sh"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self._workdir = Path(tempfile.mkdtemp(prefix="keycloak-"))
        cert, key = self._ca.server_cert(("127.0.0.1",)).write(self._workdir, "keycloak")
        trust = self._workdir / "apiserver-ca.pem"
        trust.write_bytes(self._apiserver_ca)
        port = _free_port()
        self.base = f"https://127.0.0.1:{port}"
        env = {
            **os.environ,
            "JAVA_HOME": java_home,
            "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
            "KC_BOOTSTRAP_ADMIN_PASSWORD": self._password,
        }
        log = (self._workdir / "keycloak.log").open("wb")
        self._process = subprocess.Popen(
            [
                str(home / "bin" / "kc.sh"),
                "start",
                "--optimized",
                "--http-enabled=false",
                "--http-host=127.0.0.1",
                f"--https-port={port}",
                f"--https-certificate-file={cert}",
                f"--https-certificate-key-file={key}",
                f"--hostname={self.base}",
                f"--truststore-paths={trust}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
            self._create_realm()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self) -> str:
        assert self._workdir is not None
        text = (self._workdir / "keycloak.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-40:])

    def http(self) -> httpx.Client:
        return httpx.Client(
            verify=ssl.create_default_context(cadata=self._ca.cert_pem.decode()), timeout=30
        )

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        with self.http() as http:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    break
                try:
                    if http.get(f"{self.base}/realms/master").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        raise RuntimeError(f"Keycloak did not start; log tail:\n{self.log_tail()}")

    def _admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        with self.http() as http:
            token = http.post(
                f"{self.base}/realms/master/protocol/openid-connect/token",
                data={
                    "grant_type": "password",
                    "client_id": "admin-cli",
                    "username": "admin",
                    "password": self._password,
                },
            )
            token.raise_for_status()
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            response = http.request(
                method, f"{self.base}/admin/realms{path}", json=body, headers=headers
            )
        response.raise_for_status()
        return response

    def _create_realm(self) -> None:
        self._admin("POST", "", {"realm": REALM, "enabled": True})
        self._admin(
            "POST",
            f"/{REALM}/identity-provider/instances",
            {
                "alias": IDP_ALIAS,
                "providerId": "kubernetes",
                "enabled": True,
                "config": {"issuer": self.apiserver_issuer},
            },
        )

    def add_client(self, client_id: str, namespace: str, service_account: str) -> None:
        """A confidential client that authenticates with the ServiceAccount's tokens."""
        self._admin(
            "POST",
            f"/{REALM}/clients",
            {
                "clientId": client_id,
                "enabled": True,
                "publicClient": False,
                "serviceAccountsEnabled": True,
                "standardFlowEnabled": False,
                "clientAuthenticatorType": "federated-jwt",
                "attributes": {
                    "jwt.credential.issuer": IDP_ALIAS,
                    "jwt.credential.sub": f"system:serviceaccount:{namespace}:{service_account}",
                },
            },
        )

    def add_secret_client(
        self,
        client_id: str,
        secret: str,
        *,
        token_exchange: bool = False,
        audience_for: str | None = None,
    ) -> None:
        """A confidential client with a secret; `token_exchange`: it may exchange tokens
        (standard token exchange); `audience_for`: its tokens name that client in aud, which
        standard token exchange asks of a subject token."""
        body: dict[str, Any] = {
            "clientId": client_id,
            "enabled": True,
            "publicClient": False,
            "secret": secret,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "attributes": {"standard.token.exchange.enabled": str(token_exchange).lower()},
        }
        if audience_for:
            body["protocolMappers"] = [
                {
                    "name": f"audience-{audience_for}",
                    "protocol": "openid-connect",
                    "protocolMapper": "oidc-audience-mapper",
                    "config": {
                        "included.client.audience": audience_for,
                        "access.token.claim": "true",
                    },
                }
            ]
        self._admin("POST", f"/{REALM}/clients", body)

    def client_credentials_token(self, client_id: str, secret: str) -> str:
        with self.http() as http:
            response = http.post(
                f"{self.issuer}/protocol/openid-connect/token",
                data={"grant_type": "client_credentials"},
                auth=(client_id, secret),
            )
        response.raise_for_status()
        return str(response.json()["access_token"])
