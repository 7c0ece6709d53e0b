"""TokenClient.exchange against a hand-written fake token endpoint on loopback that
misbehaves on purpose: errors, rate limits, slowness, huge bodies, redirects, discovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from oauth_token_operator.engine.config import Settings
from oauth_token_operator.engine.refresh import Refresher
from oauth_token_operator.oauth import client as oauth
from oauth_token_operator.oauth.client import TokenClient, load_client_certificate
from oauth_token_operator.oauth.protocol import MAX_RESPONSE_BYTES
from oauth_token_operator.oauth.types import (
    ClientAuth,
    Credentials,
    Endpoint,
    EndpointPolicy,
    GrantType,
    OAuthError,
    Outcome,
    TokenRequest,
)
from oauth_token_operator.resource.policy import SINGLE_TENANT
from oauth_token_operator.resource.spec import ObjectKey
from tests.support.pki import TestCA
from tests.unit.fakes import CREDS_SECRET, NS, FakeKube, b64, client_body


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class FakeIdP:
    """A tiny HTTP/1.1 server: one request per connection, routes by (method, path)."""

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if (r.method, r.path) == (method, path))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, body)
            self.requests.append(request)
            handler = self.routes.get((method, path), not_found)
            await handler(request, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def response(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        all_headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Connection": "close",
            **(headers or {}),
        }
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
        writer.write(head.encode("latin-1") + b"\r\n" + body)

    return handler


not_found = response(404, b"{}")


def token_json(access_token: str = "at-1", expires_in: int = 3600) -> bytes:
    return json.dumps(
        {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}
    ).encode()


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdP]:
    fake = FakeIdP()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        for task in list(fake._tasks):
            task.cancel()
        await asyncio.gather(*fake._tasks, return_exceptions=True)
        await server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[TokenClient]:
    tokens = TokenClient(EndpointPolicy(allow_http=True))
    try:
        yield tokens
    finally:
        await tokens.aclose()


def direct(idp: FakeIdP, path: str = "/token") -> TokenRequest:
    return TokenRequest(
        endpoint=Endpoint(token_endpoint=idp.base + path),
        grant_type=GrantType.CLIENT_CREDENTIALS,
        client_auth=ClientAuth.BASIC,
        scopes=("openid",),
    )


def discovered(idp: FakeIdP) -> TokenRequest:
    return TokenRequest(
        endpoint=Endpoint(issuer=idp.base),
        grant_type=GrantType.CLIENT_CREDENTIALS,
        client_auth=ClientAuth.POST,
    )


CREDS = Credentials("client-1", "s3cret")


async def exchange(client: TokenClient, request: TokenRequest) -> OAuthError:
    with pytest.raises(OAuthError) as err:
        await asyncio.wait_for(client.exchange(request, CREDS, 3600.0), 5)
    return err.value


async def test_success_sends_the_client_credentials(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["POST", "/token"] = response(200, token_json("at-ok", 120))
    token = await client.exchange(direct(idp), CREDS, 3600.0)
    assert token.access_token == "at-ok"
    assert token.expires_at - token.issued_at == pytest.approx(120)
    (request,) = idp.requests
    assert request.headers["authorization"].startswith("Basic ")
    assert b"grant_type=client_credentials" in request.body
    assert b"scope=openid" in request.body
    assert b"s3cret" not in request.body  # basic auth: the secret is only in the header


async def test_500_is_transient(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["POST", "/token"] = response(500, b"internal error", content_type="text/plain")
    err = await exchange(client, direct(idp))
    assert err.outcome is Outcome.TRANSIENT
    assert "500" in err.message


async def test_429_retry_after_is_passed_on(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["POST", "/token"] = response(
        429, b'{"error": "slow_down"}', headers={"Retry-After": "7"}
    )
    err = await exchange(client, direct(idp))
    assert err.outcome is Outcome.TRANSIENT
    assert err.reason == "RateLimited"
    assert err.retry_after == 7.0


async def test_invalid_client_needs_a_human(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["POST", "/token"] = response(
        401, b'{"error": "invalid_client", "error_description": "unknown client"}'
    )
    err = await exchange(client, direct(idp))
    assert err.outcome is Outcome.NEEDS_HUMAN
    assert err.reason == "InvalidClient"
    assert "s3cret" not in err.message


async def test_slow_answer_times_out_as_unreachable(
    idp: FakeIdP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        oauth, "REQUEST_TIMEOUT", aiohttp.ClientTimeout(sock_connect=0.3, sock_read=0.3)
    )

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)
        await response(200, token_json())(request, writer)

    idp.routes["POST", "/token"] = slow
    tokens = TokenClient(EndpointPolicy(allow_http=True))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        err = await exchange(tokens, direct(idp))
        assert loop.time() - started < 2
    finally:
        await tokens.aclose()
    assert err.outcome is Outcome.TRANSIENT
    assert err.reason == "ProviderUnreachable"


async def test_oversized_body_is_refused_without_reading_it_all(
    idp: FakeIdP, client: TokenClient
) -> None:
    sent = 0

    async def endless(request: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        )
        chunk = b'{"access_token": "' + b"a" * 65536
        while True:  # never ends: only a client that stops reading gets out
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()

    idp.routes["POST", "/token"] = endless
    err = await exchange(client, direct(idp))
    assert err.reason == "MalformedResponse"
    assert str(MAX_RESPONSE_BYTES) in err.message
    assert sent >= MAX_RESPONSE_BYTES


async def test_declared_oversized_body_is_refused(idp: FakeIdP, client: TokenClient) -> None:
    body = json.dumps({"access_token": "a" * (MAX_RESPONSE_BYTES + 10)}).encode()
    idp.routes["POST", "/token"] = response(200, body)
    err = await exchange(client, direct(idp))
    assert err.reason == "MalformedResponse"


async def test_malformed_json_is_malformed_response(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["POST", "/token"] = response(200, b'{"access_token": "x", ')
    err = await exchange(client, direct(idp))
    assert err.outcome is Outcome.TRANSIENT
    assert err.reason == "MalformedResponse"


async def test_redirect_is_not_followed(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["POST", "/token"] = response(302, b"", headers={"Location": idp.base + "/elsewhere"})
    idp.routes["POST", "/elsewhere"] = response(200, token_json())
    idp.routes["GET", "/elsewhere"] = response(200, token_json())
    err = await exchange(client, direct(idp))
    assert "302" in err.message
    assert [r.path for r in idp.requests] == ["/token"]  # credentials went nowhere else


async def closed_port() -> int:
    """A port nobody listens on: bind, note it, close."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_connection_refused_is_transient(client: TokenClient) -> None:
    port = await closed_port()
    request = TokenRequest(
        endpoint=Endpoint(token_endpoint=f"http://127.0.0.1:{port}/token"),
        grant_type=GrantType.CLIENT_CREDENTIALS,
        client_auth=ClientAuth.BASIC,
    )
    err = await exchange(client, request)
    assert err.outcome is Outcome.TRANSIENT
    assert err.reason == "ProviderUnreachable"


async def test_token_requests_go_through_the_environments_proxy(
    idp: FakeIdP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP(S)_PROXY and NO_PROXY apply to token requests, proxy credentials included: a
    cluster that reaches its provider only through a proxy keeps working."""
    port = await closed_port()  # the provider itself is unreachable but through the proxy
    target = f"http://127.0.0.1:{port}/token"
    idp.routes["POST", target] = response(200, token_json("at-proxied"))
    monkeypatch.setenv("HTTP_PROXY", f"http://someone:pw@127.0.0.1:{idp.port}")
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    request = TokenRequest(
        endpoint=Endpoint(token_endpoint=target),
        grant_type=GrantType.CLIENT_CREDENTIALS,
        client_auth=ClientAuth.BASIC,
    )
    tokens = TokenClient(EndpointPolicy(allow_http=True))
    try:
        token = await tokens.exchange(request, CREDS, 3600.0)
        assert token.access_token == "at-proxied"
        (proxied,) = idp.requests
        assert proxied.headers["proxy-authorization"] == "Basic " + b64("someone:pw")
    finally:
        await tokens.aclose()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    tokens = TokenClient(EndpointPolicy(allow_http=True))
    try:
        err = await exchange(tokens, request)  # straight to the closed port
    finally:
        await tokens.aclose()
    assert err.reason == "ProviderUnreachable"
    assert len(idp.requests) == 1


async def test_discovery_with_mismatched_issuer_fails(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["GET", "/.well-known/openid-configuration"] = response(
        200,
        json.dumps(
            {"issuer": "https://evil.example.com", "token_endpoint": idp.base + "/token"}
        ).encode(),
    )
    idp.routes["POST", "/token"] = response(200, token_json())
    err = await exchange(client, discovered(idp))
    assert err.reason == "DiscoveryFailed"
    assert err.outcome is Outcome.NEEDS_HUMAN
    assert idp.count("POST", "/token") == 0  # no credentials sent to an unverified endpoint


async def test_discovery_is_cached(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["GET", "/.well-known/openid-configuration"] = response(
        200,
        json.dumps({"issuer": idp.base, "token_endpoint": idp.base + "/connect/token"}).encode(),
    )
    idp.routes["POST", "/connect/token"] = response(200, token_json())
    first = await client.exchange(discovered(idp), CREDS, 3600.0)
    second = await client.exchange(discovered(idp), CREDS, 3600.0)
    assert first.access_token == second.access_token == "at-1"
    assert idp.count("GET", "/.well-known/openid-configuration") == 1
    assert idp.count("POST", "/connect/token") == 2
    post = idp.requests[-1]
    assert b"client_secret=s3cret" in post.body  # client_secret_post


async def test_discovery_falls_back_to_rfc8414(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["GET", "/.well-known/oauth-authorization-server"] = response(
        200, json.dumps({"issuer": idp.base, "token_endpoint": idp.base + "/t"}).encode()
    )
    idp.routes["POST", "/t"] = response(200, token_json())
    token = await client.exchange(discovered(idp), CREDS, 3600.0)
    assert token.access_token == "at-1"


async def test_discovery_without_documents_fails(idp: FakeIdP, client: TokenClient) -> None:
    err = await exchange(client, discovered(idp))
    assert err.reason == "DiscoveryFailed"


async def test_429_with_garbled_retry_after_is_still_an_oauth_error(
    idp: FakeIdP, client: TokenClient
) -> None:
    """A header byte 0xB2 decodes (latin-1) to '²', which str.isdigit() accepts."""

    async def garbled(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 429 X\r\nRetry-After: \xb2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )

    idp.routes["POST", "/token"] = garbled
    err = await exchange(client, direct(idp))
    assert err.reason == "RateLimited"


# --- a slow provider, lost answers, untrusted certificates, echoed secrets --------------


def refresh(idp: FakeIdP) -> TokenRequest:
    return TokenRequest(
        endpoint=Endpoint(token_endpoint=idp.base + "/token"),
        grant_type=GrantType.REFRESH_TOKEN,
        client_auth=ClientAuth.POST,
    )


REFRESH_CREDS = Credentials("client-1", "s3cret", refresh_token="rt-old-123")


async def drip(request: Request, writer: asyncio.StreamWriter) -> None:
    """Headers at once, then one byte of body every 0.4 s: every read succeeds in time."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99\r\n\r\n")
    for byte in b'{"access_token": "at-1"' + b" " * 70:
        await writer.drain()
        writer.write(bytes([byte]))
        await asyncio.sleep(0.4)


async def test_a_drip_feeding_provider_hits_the_exchange_deadline(idp: FakeIdP) -> None:
    idp.routes["POST", "/token"] = drip
    tokens = TokenClient(EndpointPolicy(allow_http=True), deadline=1.0)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        err = await exchange(tokens, direct(idp))
        assert loop.time() - started < 3  # per-read timeouts alone would wait ~40 s
        assert (err.outcome, err.reason) == (Outcome.TRANSIENT, "ExchangeDeadlineExceeded")

        # A refresh request was sent in full: its lost answer is an unknown outcome.
        with pytest.raises(OAuthError) as unknown:
            await tokens.exchange(refresh(idp), REFRESH_CREDS, 3600.0)
        assert unknown.value.reason == "ExchangeOutcomeUnknown"
        assert "rotated" in unknown.value.message
    finally:
        await tokens.aclose()


async def hang_up(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()  # read the request, then reset: no answer


async def test_a_refresh_answer_lost_after_sending_is_outcome_unknown(
    idp: FakeIdP, client: TokenClient
) -> None:
    idp.routes["POST", "/token"] = hang_up
    with pytest.raises(OAuthError) as err:
        await client.exchange(refresh(idp), REFRESH_CREDS, 3600.0)
    assert (err.value.outcome, err.value.reason) == (Outcome.TRANSIENT, "ExchangeOutcomeUnknown")
    # Client credentials lose nothing with a lost answer: an ordinary transient error.
    cc = await exchange(client, direct(idp))
    assert cc.reason == "ProviderUnreachable"


async def test_a_refused_connection_is_not_outcome_unknown(client: TokenClient) -> None:
    port = await closed_port()
    request = TokenRequest(
        endpoint=Endpoint(token_endpoint=f"http://127.0.0.1:{port}/token"),
        grant_type=GrantType.REFRESH_TOKEN,
        client_auth=ClientAuth.POST,
    )
    with pytest.raises(OAuthError) as err:
        await client.exchange(request, REFRESH_CREDS, 3600.0)
    assert err.value.reason == "ProviderUnreachable"  # never reached the provider


async def test_provider_text_echoing_secrets_is_redacted(idp: FakeIdP, client: TokenClient) -> None:
    idp.routes["POST", "/token"] = response(
        400,
        json.dumps(
            {
                "error": "invalid_grant",
                "error_description": "refresh token rt-old-123 for secret s3cret is unknown",
            }
        ).encode(),
    )
    with pytest.raises(OAuthError) as err:
        await client.exchange(refresh(idp), REFRESH_CREDS, 3600.0)
    assert err.value.reason == "InvalidGrant"
    text = err.value.message + str(err.value)
    assert "rt-old-123" not in text and "s3cret" not in text
    assert "[redacted]" in text


async def test_an_untrusted_certificate_needs_a_person(tmp_path: Path) -> None:
    cert, key = TestCA("not trusted by anyone").server_cert(("127.0.0.1",)).write(tmp_path, "s")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    tokens = TokenClient(EndpointPolicy())
    request = TokenRequest(
        endpoint=Endpoint(token_endpoint=f"https://127.0.0.1:{port}/token"),
        grant_type=GrantType.CLIENT_CREDENTIALS,
        client_auth=ClientAuth.BASIC,
    )
    try:
        err = await exchange(tokens, request)
    finally:
        await tokens.aclose()
        server.close()
        await server.wait_closed()
    assert (err.outcome, err.reason) == (Outcome.NEEDS_HUMAN, "TLSVerificationFailed")
    assert "caBundleSecretRef" in err.message


async def test_one_slow_provider_cannot_starve_other_clients(idp: FakeIdP) -> None:
    """Four clients of a drip-feeding provider and one of a healthy one share two exchange
    slots: the deadline frees the slots, and the healthy client gets its token."""
    idp.routes["POST", "/slow"] = drip
    idp.routes["POST", "/fast"] = response(200, token_json("at-fast", 3600))
    kube = FakeKube()
    kube.put(
        NS,
        {
            "metadata": {"name": CREDS_SECRET, "namespace": NS},
            "data": {"client_id": b64("c"), "client_secret": b64("s")},
        },
    )
    tokens = TokenClient(EndpointPolicy(allow_http=True), deadline=1.0)
    refresher = Refresher(kube, tokens, Settings(guard=SINGLE_TENANT, concurrency=2))
    names = ["slow-1", "slow-2", "slow-3", "slow-4", "fast"]
    for name in names:
        body = client_body(tokenEndpoint=idp.base + ("/fast" if name == "fast" else "/slow"))
        body["metadata"] = {"name": name, "namespace": NS, "uid": name, "generation": 1}
        await refresher.observe(body)
    scheduler = asyncio.create_task(refresher.scheduler.run())
    try:
        for _ in range(200):  # at most 10 s; without the deadline the drip takes ~40 s each
            if (NS, "fast-token") in kube.secrets:
                break
            await asyncio.sleep(0.05)
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
        await tokens.aclose()
    assert kube.data("fast-token")["access_token"] == "at-fast"
    for name in names[:2]:
        (condition,) = kube.statuses[ObjectKey(NS, name)]["conditions"]
        assert condition["reason"] == "ExchangeDeadlineExceeded"


# --- client certificates (RFC 8705) -------------------------------------------------------


async def test_the_mtls_alias_is_used_only_with_a_client_certificate(
    idp: FakeIdP, client: TokenClient
) -> None:
    document = {
        "issuer": idp.base,
        "token_endpoint": idp.base + "/token",
        "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.example/token"},
    }
    idp.routes["GET", "/.well-known/openid-configuration"] = response(
        200, json.dumps(document).encode()
    )
    assert await client.token_endpoint(discovered(idp)) == idp.base + "/token"
    assert await client.token_endpoint(discovered(idp), None, True) == "https://mtls.example/token"
    assert idp.count("GET", "/.well-known/openid-configuration") == 1


async def test_a_client_certificate_is_never_presented_over_http(
    idp: FakeIdP, client: TokenClient
) -> None:
    idp.routes["POST", "/token"] = response(200, token_json())
    pair = TestCA().client_cert("mtls")
    creds = Credentials("client-1", client_certificate=pair.cert_pem.decode(), client_key="k")
    with pytest.raises(OAuthError) as err:
        await client.exchange(direct(idp), creds, 3600.0)
    assert err.value.reason == "EndpointNotAllowed"
    assert idp.count("POST", "/token") == 0


def test_a_certificate_and_key_that_do_not_match_need_a_person() -> None:
    ca = TestCA()
    pair, other = ca.client_cert("a"), ca.client_cert("b")
    context = ssl.create_default_context()
    load_client_certificate(context, pair.cert_pem.decode(), pair.key_pem.decode())  # loads
    with pytest.raises(OAuthError) as err:
        load_client_certificate(context, pair.cert_pem.decode(), other.key_pem.decode())
    assert err.value.reason == "CredentialsInvalid"
    assert "PRIVATE KEY" not in str(err.value)


async def test_a_renewed_certificate_replaces_the_pool_of_the_old_one() -> None:
    """Pools are per certificate; cert-manager renewing every client's certificate must not
    leave a pool per renewal behind."""
    ca = TestCA()
    tokens = TokenClient(EndpointPolicy())
    try:
        for _ in range(3):
            pair = ca.client_cert("mtls")
            creds = Credentials(
                "client-1",
                client_certificate=pair.cert_pem.decode(),
                client_key=pair.key_pem.decode(),
            )
            tokens._http(None, creds)
        tokens._http(None)  # the plain pool (discovery) is another one
        await asyncio.sleep(0)
        assert len(tokens._clients) == 2
    finally:
        await tokens.aclose()


# --- a provider's discovery: one cache entry per provider, and its status check -----------


def from_provider(idp: FakeIdP, issuer: str | None = None, namespace: str = "") -> TokenRequest:
    kind = "OAuthProvider" if namespace else "ClusterOAuthProvider"
    endpoint = Endpoint(
        issuer=issuer or idp.base,
        provider="sso",
        provider_kind=kind,
        provider_namespace=namespace or None,
    )
    return TokenRequest(endpoint, GrantType.CLIENT_CREDENTIALS, ClientAuth.POST)


def serve_discovery(idp: FakeIdP, path: str = "", token: str = "/token") -> None:
    document = {"issuer": idp.base + path, "token_endpoint": idp.base + path + token}
    idp.routes["GET", path + "/.well-known/openid-configuration"] = response(
        200, json.dumps(document).encode()
    )


async def test_a_providers_edit_replaces_its_one_discovery_entry(
    idp: FakeIdP, client: TokenClient
) -> None:
    serve_discovery(idp)
    serve_discovery(idp, "/v2", "/t2")

    def fetches() -> int:
        return sum(r.method == "GET" for r in idp.requests)

    assert await client.token_endpoint(from_provider(idp)) == idp.base + "/token"
    # A new issuer: discovered afresh, in the same entry; nothing of the old one is left.
    v2 = from_provider(idp, idp.base + "/v2")
    assert await client.token_endpoint(v2) == idp.base + "/v2/t2"
    assert (fetches(), len(client._discovery)) == (2, 1)
    # A new CA bundle: afresh too, in the same entry.
    ca = TestCA().cert_pem.decode()
    assert await client.token_endpoint(v2, ca) == idp.base + "/v2/t2"
    assert (fetches(), len(client._discovery)) == (3, 1)
    assert await client.token_endpoint(v2, ca) == idp.base + "/v2/t2"
    assert fetches() == 3  # cached
    # An OAuthProvider of the same name in a namespace has an entry of its own.
    await client.token_endpoint(from_provider(idp, namespace="ml"))
    assert len(client._discovery) == 2
    client.forget_provider("OAuthProvider", "ml", "sso")
    client.forget_provider("ClusterOAuthProvider", None, "sso")
    assert client._discovery == {}


async def test_a_failed_discovery_leaves_no_entry_behind(idp: FakeIdP, client: TokenClient) -> None:
    serve_discovery(idp)
    await client.token_endpoint(from_provider(idp))
    idp.routes["GET", "/.well-known/openid-configuration"] = response(503, b"{}")
    with pytest.raises(OAuthError) as err:
        await client.check_provider(from_provider(idp).endpoint, None)
    assert err.value.reason == "DiscoveryFailed"
    assert client._discovery == {}  # the clients find out too, at their next exchange


async def test_a_providers_check_fetches_discovery_afresh_for_its_clients(
    idp: FakeIdP, client: TokenClient
) -> None:
    serve_discovery(idp)
    endpoint = from_provider(idp).endpoint
    assert await client.check_provider(endpoint, None) == idp.base + "/token"
    serve_discovery(idp, token="/moved")
    assert await client.check_provider(endpoint, None) == idp.base + "/moved"
    assert idp.count("GET", "/.well-known/openid-configuration") == 2
    # The clients use what the check found, without a fetch of their own.
    assert await client.token_endpoint(from_provider(idp)) == idp.base + "/moved"
    assert idp.count("GET", "/.well-known/openid-configuration") == 2
    assert all(r.method == "GET" for r in idp.requests)  # no credential, no token request


async def test_a_providers_check_applies_the_endpoint_policy_and_calls_no_token_endpoint(
    idp: FakeIdP,
) -> None:
    strict = TokenClient(EndpointPolicy())
    try:
        with pytest.raises(OAuthError) as err:  # discovery itself is plain http
            await strict.check_provider(from_provider(idp).endpoint, None)
        assert err.value.reason == "EndpointNotAllowed"
        given = Endpoint(token_endpoint=idp.base + "/token", provider="sso")
        with pytest.raises(OAuthError) as err:
            await strict.check_provider(given, None)
        assert err.value.reason == "EndpointNotAllowed"
        https = Endpoint(token_endpoint="https://127.0.0.1:1/token", provider="sso")
        assert await strict.check_provider(https, None) == "https://127.0.0.1:1/token"
        with pytest.raises(OAuthError) as err:
            await strict.check_provider(https, "not a PEM")
        assert err.value.reason == "InvalidCABundle"
    finally:
        await strict.aclose()
    assert idp.requests == []
    # Discovery naming a plain http token endpoint: what its clients would be refused.
    allowed_http_discovery = TokenClient(
        EndpointPolicy(allow_http=True, allowed_hosts=frozenset({"127.0.0.1"}))
    )
    try:
        document = {"issuer": idp.base, "token_endpoint": "http://elsewhere.example/token"}
        idp.routes["GET", "/.well-known/openid-configuration"] = response(
            200, json.dumps(document).encode()
        )
        with pytest.raises(OAuthError) as err:
            await allowed_http_discovery.check_provider(from_provider(idp).endpoint, None)
        assert err.value.reason == "EndpointNotAllowed"
        assert "allowed hosts" in err.value.message
    finally:
        await allowed_http_discovery.aclose()
