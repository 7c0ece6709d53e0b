"""The token client: discovery, grants, client authentication, and error mapping into a
small set of outcomes. Knows nothing of Kubernetes.

No secret value ever reaches a log line, an exception message or a repr: credentials and
tokens are excluded from dataclass reprs, and errors carry only the provider's error code
and a truncated description."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import certifi

from oauth_token_operator import reasons
from oauth_token_operator.oauth.guard import check_endpoint
from oauth_token_operator.oauth.protocol import (
    MAX_RESPONSE_BYTES,
    build_form,
    map_error_response,
    parse_retry_after,
    parse_token_response,
    printable,
    redact,
)
from oauth_token_operator.oauth.proxies import proxy_for
from oauth_token_operator.oauth.types import (
    Credentials,
    Endpoint,
    EndpointPolicy,
    GrantType,
    OAuthError,
    Outcome,
    Token,
    TokenRequest,
)

DISCOVERY_TTL = 3600.0
# Per connect and per read: the whole exchange has its own deadline (EXCHANGE_DEADLINE).
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=30.0)
# Discovery plus the token request, all told: a provider that drip-feeds its answer must not
# hold one of the operator's few exchange slots for longer.
EXCHANGE_DEADLINE = 30.0


def load_client_certificate(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """Loads a PEM certificate chain and key into the context. ssl reads them only from
    files, so they go through anonymous memory files: the key never touches a disk."""
    fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("tls.crt", "tls.key")]
    try:
        for fd, pem in zip(fds, (certificate, key), strict=True):
            os.write(fd, pem.encode())
        context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    except (ssl.SSLError, ValueError, OSError):
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            reasons.CREDENTIALS_INVALID,
            "the client certificate Secret's tls.crt and tls.key are not a PEM certificate "
            "and its unencrypted private key",
        ) from None
    finally:
        for fd in fds:
            os.close(fd)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise OAuthError(
                Outcome.TRANSIENT,
                reasons.MALFORMED_RESPONSE,
                f"response from {response.url} exceeds {MAX_RESPONSE_BYTES} bytes",
            )
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class _Discovered:
    """A discovery document's answer, and what it was fetched for."""

    expires: float
    issuer: str
    ca: str  # _ca_digest of the CA bundle it was fetched with
    token_endpoint: str
    mtls_alias: str  # RFC 8705's mtls_endpoint_aliases.token_endpoint, or ""


def _ca_digest(ca_pem: str | None) -> str:
    return hashlib.sha256(ca_pem.encode()).hexdigest()[:32] if ca_pem else ""


def discovery_key(endpoint: Endpoint, ca_pem: str | None) -> tuple[str, str, str]:
    """Where a discovery document is cached: one entry per provider (kind, namespace, name),
    whatever its issuer and CA become, so that an edit replaces the entry instead of leaving
    one behind; one per issuer and CA bundle for an inline issuer."""
    if endpoint.provider:
        return (endpoint.provider_kind, endpoint.provider_namespace or "", endpoint.provider)
    return ("", endpoint.issuer or "", _ca_digest(ca_pem))


def _default_trust() -> ssl.SSLContext:
    """The trust store for providers without a CA bundle: SSL_CERT_FILE or SSL_CERT_DIR when
    set, else certifi's (what the operator trusted when it spoke through httpx)."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


class TokenClient:
    """Performs exchanges. One instance serves all OAuthClients: it pools connections per
    trust store and caches discovery documents.

    aiohttp, not httpx: a token request through httpx cost the operator about three times
    the CPU (a third of a refresh's, bench_steady's profile), and aiohttp is already here
    for the Kubernetes client."""

    def __init__(
        self, policy: EndpointPolicy, clock: Any = time.time, deadline: float = EXCHANGE_DEADLINE
    ) -> None:
        self.policy = policy
        self._clock = clock
        self.deadline = deadline
        self._clients: dict[str, aiohttp.ClientSession] = {}
        # (client ID, CA) -> the key of its client-certificate pool: a renewed certificate
        # replaces the pool of the old one instead of adding to them.
        self._certificate_pools: dict[tuple[str, str], str] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # discovery_key() -> the document's answer; used while unexpired and fetched for the
        # same issuer and CA bundle as asked for now.
        self._discovery: dict[tuple[str, str, str], _Discovered] = {}
        # scheme://host:port -> the environment's proxy for it (proxies.proxy_for), once.
        self._proxies: dict[str, tuple[str | None, dict[str, str]]] = {}

    def _http(self, ca_pem: str | None, creds: Credentials | None = None) -> aiohttp.ClientSession:
        """A pooled client per trust store and, for mutual TLS, per client certificate."""
        certificate = None
        if creds is not None and creds.client_certificate:
            certificate = (creds.client_certificate, creds.client_key or "")
        material = "\0".join((ca_pem or "", *(certificate or ())))
        key = hashlib.sha256(material.encode()).hexdigest() if material else ""
        client = self._clients.get(key)
        if client is None:
            if ca_pem or certificate:
                try:
                    verify = ssl.create_default_context(cadata=ca_pem or None)
                except (ssl.SSLError, ValueError):
                    raise OAuthError(
                        Outcome.NEEDS_HUMAN,
                        reasons.INVALID_CA_BUNDLE,
                        "the CA bundle is not valid PEM certificates",
                    ) from None
                if certificate:
                    assert creds is not None
                    load_client_certificate(verify, *certificate)
                    self._replace_certificate_pool((creds.client_id, ca_pem or ""), key)
            else:
                verify = _default_trust()
            client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=verify),
                timeout=REQUEST_TIMEOUT,
                headers={"User-Agent": "oauth-token-operator"},
                trace_configs=[_TRACE],
                trust_env=False,
            )
            self._clients[key] = client
        return client

    def _replace_certificate_pool(self, owner: tuple[str, str], key: str) -> None:
        old = self._certificate_pools.get(owner)
        self._certificate_pools[owner] = key
        if old is not None and old != key and old in self._clients:
            # A request still on the old pool fails as a transient error and is retried.
            task = asyncio.get_running_loop().create_task(self._clients.pop(old).close())
            self._closing.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def _proxy(self, url: str) -> tuple[str | None, dict[str, str]]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._proxies:
            self._proxies[origin] = proxy_for(origin)
        return self._proxies[origin]

    async def _send(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: str,
        sent: _Sent | None = None,
        **kwargs: Any,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """One request. `sent`, when given, records whether the request may have reached the
        server: after that, a lost answer is an unknown outcome, not a refused request."""
        await check_endpoint(url, self.policy)
        proxy, proxy_headers = self._proxy(url)
        if proxy_headers and not url.startswith("https://"):
            # A plain request goes to the proxy itself (aiohttp passes proxy_headers only to
            # the CONNECT of a tunnel).
            kwargs["headers"] = {**kwargs.get("headers", {}), **proxy_headers}
            proxy_headers = {}
        try:
            async with http.request(
                method,
                url,
                allow_redirects=False,
                proxy=proxy,
                proxy_headers=proxy_headers or None,
                trace_request_ctx=sent,
                **kwargs,
            ) as response:
                return response.status, await _read_limited(response), response.headers
        except aiohttp.ClientError as exc:
            if _verification_failed(exc):
                raise OAuthError(
                    Outcome.NEEDS_HUMAN,
                    reasons.TLS_VERIFICATION_FAILED,
                    f"{url}: the provider's TLS certificate is not trusted "
                    f"({printable(str(exc), 120)}); check spec.tls.caBundleSecretRef",
                ) from None
            if sent is not None and sent.maybe:
                raise sent.unknown(url, type(exc).__name__) from None
            if isinstance(exc, TimeoutError):
                raise OAuthError(
                    Outcome.TRANSIENT, reasons.PROVIDER_UNREACHABLE, f"{url}: timed out"
                ) from None
            raise OAuthError(
                Outcome.TRANSIENT,
                reasons.PROVIDER_UNREACHABLE,
                f"{url}: {type(exc).__name__}: {printable(str(exc))}",
            ) from None

    async def token_endpoint(
        self, request: TokenRequest, ca_pem: str | None = None, mutual_tls: bool = False
    ) -> str:
        """The configured token endpoint, or the one discovered from the issuer (cached);
        with a client certificate, the provider's mTLS alias when it names one (RFC 8705 5)."""
        endpoint = request.endpoint
        if endpoint.token_endpoint:
            return endpoint.token_endpoint
        cached = self._discovery.get(discovery_key(endpoint, ca_pem))
        if (
            cached is None
            or cached.expires <= self._clock()
            or (cached.issuer, cached.ca) != (endpoint.issuer, _ca_digest(ca_pem))
        ):
            cached = await self._fetch_discovery(endpoint, ca_pem)
        return (mutual_tls and cached.mtls_alias) or cached.token_endpoint

    async def _fetch_discovery(self, endpoint: Endpoint, ca_pem: str | None) -> _Discovered:
        """A fresh discovery document, cached; a failure drops the entry it would replace."""
        assert endpoint.issuer is not None
        key = discovery_key(endpoint, ca_pem)
        try:
            url, alias = await self._discover(endpoint.issuer, ca_pem)
        except OAuthError:
            self._discovery.pop(key, None)
            raise
        found = _Discovered(
            self._clock() + DISCOVERY_TTL, endpoint.issuer, _ca_digest(ca_pem), url, alias
        )
        self._discovery[key] = found
        return found

    async def check_provider(self, endpoint: Endpoint, ca_pem: str | None) -> str:
        """For a provider's status: the token endpoint its clients would use, found the way
        they find it (the same trust store, endpoint policy and issuer check), or raises the
        OAuthError they would get. Discovery is fetched afresh and cached for the clients;
        spec.tokenEndpoint is taken as given (its CA bundle parsed, the policy checked), as
        nothing can be asked of a token endpoint without credentials. Sends no credential."""
        try:
            async with asyncio.timeout(self.deadline):
                if endpoint.token_endpoint:
                    self._http(ca_pem)  # the clients' pool: a bad CA bundle is refused here
                    url = endpoint.token_endpoint
                else:
                    url = (await self._fetch_discovery(endpoint, ca_pem)).token_endpoint
                await check_endpoint(url, self.policy)
        except TimeoutError:
            raise OAuthError(
                Outcome.TRANSIENT,
                reasons.PROVIDER_UNREACHABLE,
                f"the discovery document did not come within {self.deadline:.0f}s",
            ) from None
        return url

    def forget_provider(self, kind: str, namespace: str | None, name: str) -> None:
        """The provider changed or is gone: its clients discover afresh."""
        self._discovery.pop((kind, namespace or "", name), None)

    async def _discover(self, issuer: str, ca_pem: str | None) -> tuple[str, str]:
        http = self._http(ca_pem)
        base = issuer.rstrip("/")
        parts = urlsplit(base)
        candidates = [
            f"{base}/.well-known/openid-configuration",
            # RFC 8414 inserts the well-known segment before the issuer's path.
            f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}",
        ]
        for url in candidates:
            status, body, _ = await self._send(http, "GET", url)
            if status == 404:
                continue
            if status != 200:
                raise OAuthError(
                    Outcome.TRANSIENT, reasons.DISCOVERY_FAILED, f"{url} answered HTTP {status}"
                )
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise OAuthError(Outcome.TRANSIENT, reasons.DISCOVERY_FAILED, f"{url} is not JSON")
            if str(document.get("issuer", "")).rstrip("/") != base:
                raise OAuthError(
                    Outcome.NEEDS_HUMAN,
                    reasons.DISCOVERY_FAILED,
                    f"{url} names issuer {printable(str(document.get('issuer')), 100)!r}, "
                    f"not {issuer!r}",
                )
            token_endpoint = document.get("token_endpoint")
            if not isinstance(token_endpoint, str) or not token_endpoint:
                raise OAuthError(
                    Outcome.NEEDS_HUMAN, reasons.DISCOVERY_FAILED, f"{url} has no token_endpoint"
                )
            aliases = document.get("mtls_endpoint_aliases")
            alias = aliases.get("token_endpoint") if isinstance(aliases, dict) else None
            return token_endpoint, alias if isinstance(alias, str) else ""
        raise OAuthError(
            Outcome.NEEDS_HUMAN, reasons.DISCOVERY_FAILED, f"no discovery document under {issuer}"
        )

    async def exchange(
        self,
        request: TokenRequest,
        creds: Credentials,
        default_lifetime: float,
        ca_pem: str | None = None,
    ) -> Token:
        """One exchange at the token endpoint, discovery included, within the exchange
        deadline; raises OAuthError on any failure, with provider text redacted."""
        # Only a refresh request can lose something when its answer is lost.
        sent = _Sent() if request.grant_type is GrantType.REFRESH_TOKEN else None
        try:
            async with asyncio.timeout(self.deadline):
                return await self._exchange(request, creds, default_lifetime, ca_pem, sent)
        except TimeoutError:
            if sent is not None and sent.maybe:
                where = request.endpoint.token_endpoint or "token endpoint"
                raise sent.unknown(where, "deadline") from None
            raise OAuthError(
                Outcome.TRANSIENT,
                reasons.EXCHANGE_DEADLINE_EXCEEDED,
                f"discovery and the token request took longer than {self.deadline:.0f}s "
                "(a slow or drip-feeding provider); retrying with backoff",
            ) from None
        except OAuthError as exc:
            exc.message = redact(exc.message, creds.secrets())
            exc.args = (exc.message,)
            raise

    async def _exchange(
        self,
        request: TokenRequest,
        creds: Credentials,
        default_lifetime: float,
        ca_pem: str | None,
        sent: _Sent | None,
    ) -> Token:
        mutual_tls = bool(creds.client_certificate)
        url = await self.token_endpoint(request, ca_pem, mutual_tls)
        if (mutual_tls or creds.client_assertion or creds.subject_token) and url[:8] != "https://":
            what = "a client certificate" if mutual_tls else "a ServiceAccount or subject token"
            raise OAuthError(
                Outcome.NEEDS_HUMAN,
                reasons.ENDPOINT_NOT_ALLOWED,
                f"{url}: {what} is only presented over https",
            )
        now = self._clock()
        form, headers = build_form(request, creds, url, now)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        status, body, response_headers = await self._send(
            self._http(ca_pem, creds),
            "POST",
            url,
            sent,
            data=urlencode(form, doseq=True).encode(),
            headers=headers,
        )
        if status != 200:
            retry_after = parse_retry_after(response_headers.get("Retry-After"), self._clock())
            raise map_error_response(status, body, retry_after)
        return parse_token_response(body, now, default_lifetime)


class _Sent:
    """Follows one request through aiohttp's trace events (passed as its trace_request_ctx)."""

    def __init__(self) -> None:
        self.maybe = False

    @staticmethod
    def unknown(url: str, what: str) -> OAuthError:
        return OAuthError(
            Outcome.TRANSIENT,
            reasons.EXCHANGE_OUTCOME_UNKNOWN,
            f"{url}: the refresh request was sent but no answer came back ({what}); if the "
            "provider rotated the refresh token, the new one was lost with the answer",
        )


async def _body_sent(
    session: aiohttp.ClientSession,
    context: Any,
    params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    # Once body bytes are on their way, the provider may act on the request whatever happens
    # next (a form is one chunk: it is then whole).
    sent = context.trace_request_ctx
    if isinstance(sent, _Sent):
        sent.maybe = True


_TRACE = aiohttp.TraceConfig()
_TRACE.on_request_chunk_sent.append(_body_sent)
_TRACE.freeze()


def _verification_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
