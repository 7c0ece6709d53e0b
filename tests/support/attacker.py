"""A tenant's own endpoint on loopback (https from the test CA, or plain http): it records
every request it receives, answers a token request with a token, and can serve a discovery
document naming any token endpoint. Tests of the trust boundary assert it receives nothing."""

from __future__ import annotations

import json
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.pki import TestCA


class _Server(ThreadingHTTPServer):
    received: list[tuple[str, str, bytes]]
    discovery: dict[str, Any] | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.received.append(("GET", self.path, b""))
        if self.server.discovery is not None and self.path.endswith("/openid-configuration"):
            self._answer(200, self.server.discovery)
        else:
            self._answer(404, {})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        auth = self.headers.get("Authorization", "").encode()
        self.server.received.append(("POST", self.path, body + b"\n" + auth))
        self._answer(200, {"access_token": "stolen", "token_type": "Bearer", "expires_in": 3600})

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Attacker:
    def __init__(self, ca: TestCA | None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.received = []
        self.scheme = "http"
        if ca is not None:
            with tempfile.TemporaryDirectory() as directory:
                cert, key = ca.server_cert(("127.0.0.1",)).write(Path(directory), "attacker")
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def received(self) -> list[tuple[str, str, bytes]]:
        return list(self._server.received)

    def posts(self) -> list[bytes]:
        return [body for method, _, body in self._server.received if method == "POST"]

    def serve_discovery(self, document: dict[str, Any]) -> None:
        self._server.discovery = document

    def __enter__(self) -> Attacker:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
