"""A real OpenID Provider for tests: `oidc-provider` (tests/idp/server.mjs) on loopback over
HTTPS, started and stopped from Python.

Clients are static (oidc-provider reads them at startup), so pass them at construction;
`default_clients()` covers the shapes the operator supports. Scopes accepted by the resource
server (and so by client credentials): openid email roles offline_access api:read api:write.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

from tests.support.pki import KeyPair, TestCA, jwk_with_certificate, self_signed
from tests.support.service import Service

IDP_DIR = Path(__file__).resolve().parent.parent / "idp"

# A loopback redirect for native clients: oidc-provider (RFC 8252) accepts any port on it.
LOOPBACK_REDIRECT_URI = "http://127.0.0.1/callback"
# The resource (and so `aud`) of access tokens requested without a resource parameter.
DEFAULT_RESOURCE = "urn:oauth-token-operator:test"
# devInteractions accepts any login and password; the login becomes `sub`.
TEST_LOGIN = "test-user"

CC_BASIC = "cc-basic"
CC_BASIC_SECRET = "cc-basic-secret"
CC_POST = "cc-post"
CC_POST_SECRET = "cc-post-secret"
RT_POST = "rt-post"
RT_POST_SECRET = "rt-post-secret"
RT_PUBLIC = "rt-public"
# Mutual TLS (RFC 8705), with certificate-bound access tokens: a certificate from the test CA
# with this subject, or one of the self-signed certificates registered below (two, so that a
# test can rotate from one to the other).
MTLS_PKI = "mtls-pki"
MTLS_PKI_SUBJECT = "CN=mtls-pki"
MTLS_SELF = "mtls-self"
MTLS_SELF_CERTS: tuple[KeyPair, KeyPair] = (self_signed(MTLS_SELF), self_signed(MTLS_SELF))

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 5.0


def default_clients() -> list[dict[str, Any]]:
    """Client metadata (oidc-provider format) for the shapes the operator must serve."""
    cc_scope = "openid email roles api:read api:write"
    login = {
        "application_type": "native",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [LOOPBACK_REDIRECT_URI],
    }
    return [
        {
            "client_id": CC_BASIC,
            "client_secret": CC_BASIC_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": cc_scope,
        },
        {
            "client_id": CC_POST,
            "client_secret": CC_POST_SECRET,
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": cc_scope,
        },
        {
            "client_id": RT_POST,
            "client_secret": RT_POST_SECRET,
            "token_endpoint_auth_method": "client_secret_post",
            **login,
        },
        {"client_id": RT_PUBLIC, "token_endpoint_auth_method": "none", **login},
        {
            "client_id": MTLS_PKI,
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": MTLS_PKI_SUBJECT,
            "tls_client_certificate_bound_access_tokens": True,
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": cc_scope,
        },
        {
            "client_id": MTLS_SELF,
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "jwks": {"keys": [jwk_with_certificate(p.cert_pem) for p in MTLS_SELF_CERTS]},
            "tls_client_certificate_bound_access_tokens": True,
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": cc_scope,
        },
    ]


class IdentityProvider(Service):
    """Runs `node tests/idp/server.mjs` until stopped; use as a context manager."""

    def __init__(
        self,
        ca: TestCA,
        clients: list[dict[str, Any]] | None = None,
        *,
        access_token_ttl: int = 3600,
        refresh_token_ttl: int | None = None,
    ) -> None:
        self._ca = ca
        self._clients = default_clients() if clients is None else clients
        self._access_token_ttl = access_token_ttl
        self._refresh_token_ttl = refresh_token_ttl
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._issuer: str | None = None
        self._discovery: dict[str, Any] | None = None

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise RuntimeError("identity provider is not running")
        return self._issuer

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem

    @property
    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            with self.http_client() as http:
                response = http.get(f"{self.issuer}/.well-known/openid-configuration")
                response.raise_for_status()
                self._discovery = response.json()
        return self._discovery

    @property
    def token_endpoint(self) -> str:
        return str(self.discovery["token_endpoint"])

    @property
    def authorization_endpoint(self) -> str:
        return str(self.discovery["authorization_endpoint"])

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self._ca.cert_pem.decode())

    def http_client(self) -> httpx.Client:
        """A client that trusts the test CA and does not follow redirects (logins read them)."""
        return httpx.Client(verify=self.ssl_context(), timeout=10.0)

    def stats(self) -> dict[str, Any]:
        with self.http_client() as http:
            response = http.get(f"{self.issuer}/__test/stats")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def reset_stats(self) -> None:
        with self.http_client() as http:
            http.post(f"{self.issuer}/__test/reset").raise_for_status()

    def in_flight(self) -> int:
        """Token requests received and not answered yet."""
        stats = self.stats()
        return int(stats["tokenRequests"]) - int(sum(stats["byGrant"].values()))

    def delay_token_answers(self, ms: int) -> None:
        """Holds every /token answer back `ms` ms after the provider acted on it (0: off)."""
        with self.http_client() as http:
            http.post(f"{self.issuer}/__test/delay", params={"ms": ms}).raise_for_status()

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("identity provider already started")
        _ensure_node_modules()
        self._workdir = Path(tempfile.mkdtemp(prefix="idp-"))
        cert, key = self._ca.server_cert(("127.0.0.1",)).write(self._workdir, "idp")
        client_ca = self._workdir / "client-ca.crt"
        client_ca.write_bytes(self._ca.cert_pem)
        config: dict[str, Any] = {
            "port": 0,  # the server picks a free port and reports it: no race with other tests
            "certFile": str(cert),
            "keyFile": str(key),
            "clientCaFile": str(client_ca),
            "clients": self._clients,
            "accessTokenTTL": self._access_token_ttl,
        }
        if self._refresh_token_ttl is not None:
            config["refreshTokenTTL"] = self._refresh_token_ttl
        config_path = self._workdir / "config.json"
        config_path.write_text(json.dumps(config))
        # Files rather than pipes: nobody has to keep draining them while the tests run.
        stdout_path, stderr_path = self._workdir / "stdout.log", self._workdir / "stderr.log"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                ["node", str(IDP_DIR / "server.mjs"), str(config_path)],
                cwd=IDP_DIR,
                stdout=stdout,
                stderr=stderr,
            )
        try:
            self._issuer = self._wait_ready(stdout_path, stderr_path)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, stdout_path: Path, stderr_path: Path) -> str:
        assert self._process is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            for line in stdout_path.read_text().splitlines():
                if line.startswith("READY "):
                    return line.removeprefix("READY ").strip()
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-30:])
        exited = self._process.poll() is not None
        state = f"exited with {self._process.returncode}" if exited else "timed out"
        raise RuntimeError(
            f"identity provider {state} before READY (after {_READY_TIMEOUT:.0f}s at most); "
            f"stderr tail:\n{tail}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._issuer = self._discovery = None


def _ensure_node_modules() -> None:
    if (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=IDP_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm ci in {IDP_DIR} failed:\n{result.stderr[-3000:]}")


class _FormParser(HTMLParser):
    """Collects the first form's action and input fields from an interaction page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action, self._in_form = attributes.get("action", ""), True
        elif tag == "input" and self._in_form and "name" in attributes:
            self.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def complete_login(
    authorize_url: str, http: httpx.Client, *, login: str = TEST_LOGIN, max_steps: int = 20
) -> str:
    """Plays the browser through oidc-provider's devInteractions: follows redirects, submits
    the login form (any login) and the consent form, and returns the Location that leaves the
    provider (the redirect_uri with code or error) without requesting it, so nothing has to
    listen on the loopback redirect. `http` must trust the provider and keep cookies across
    calls (the interaction is bound to them) and must not follow redirects itself."""
    provider_origin = urlsplit(authorize_url)[:2]
    response = http.get(authorize_url)
    for _ in range(max_steps):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if urlsplit(location)[:2] != provider_origin:
                return location
            response = http.get(location)
            continue
        if response.status_code != 200 or "html" not in response.headers.get("content-type", ""):
            raise RuntimeError(f"login stopped at {response.url}: {response.status_code}")
        form = _FormParser()
        form.feed(response.text)
        if form.action is None:
            raise RuntimeError(f"no form on {response.url}:\n{response.text[:2000]}")
        fields = form.fields
        if fields.get("prompt") == "login":
            fields |= {"login": login, "password": "any"}
        response = http.post(urljoin(str(response.url), form.action), data=fields)
    raise RuntimeError(f"login did not leave the provider within {max_steps} steps")


def authorization_code_grant(
    idp: IdentityProvider,
    client_id: str,
    client_secret: str | None = None,
    redirect_uri: str = "http://127.0.0.1:53682/callback",
) -> dict[str, Any]:
    """A user's login, in process: authorize (PKCE, offline_access, explicit consent, which
    oidc-provider needs to grant it), the dev login and consent forms, the code exchange.
    Returns the token response, refresh token included."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_urlsafe(16)
    query = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "scope": "openid offline_access",
        "prompt": "consent",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        "state": state,
        "sub_type": "user",
    }
    with idp.http_client() as http:
        location = complete_login(f"{idp.authorization_endpoint}?{urlencode(query)}", http)
        if not location.startswith(f"{redirect_uri}?"):
            raise RuntimeError(f"login ended at {location}")
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        if params.get("state") != state or params.get("iss") != idp.issuer:
            raise RuntimeError(f"unexpected redirect {location}")
        form = {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": client_id,
        }
        if client_secret is not None:
            form["client_secret"] = client_secret
        response = http.post(idp.token_endpoint, data=form)
    if response.status_code != 200:
        raise RuntimeError(f"code exchange answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body
