"""`login`: the one browser step a refresh_token client needs. Runs the authorization-code
flow with PKCE (RFC 7636, S256) on a loopback redirect (RFC 8252), passes extra authorize
parameters through (for example sub_type=user), and stores the refresh token, with the
client ID (and secret, if given), in the Secret the OAuthClient reads. The issuer and CA come
from the flags, a provider (--provider) or an OAuthClient (--client): cli/login_source.py."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import secrets
import sys
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from oauth_token_operator.cli.login_source import (
    LOGIN_AUTHS,
    Source,
    check_flags,
    provider_arg,
    source_for,
)
from oauth_token_operator.cli.reads import CommandError, add_operator_namespace
from oauth_token_operator.cli.rescue import keep_refresh_token
from oauth_token_operator.kube.client import Kube, default_namespace
from oauth_token_operator.oauth.client import load_client_certificate
from oauth_token_operator.oauth.guard import check_endpoint
from oauth_token_operator.oauth.protocol import (
    client_authentication,
    map_error_response,
    parse_token_response,
)
from oauth_token_operator.oauth.types import Credentials, EndpointPolicy, OAuthError, Outcome, Token
from oauth_token_operator.wire import encode_data

CALLBACK_TIMEOUT = 600.0


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "login",
        help="obtain a refresh token in a browser and store it in a Secret",
        parents=parents,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--issuer", help="issuer URL (OpenID discovery)")
    where.add_argument(
        "--provider",
        type=provider_arg,
        metavar="[KIND/]NAME",
        help="take the issuer, CA bundle, default scopes and client authentication from a "
        "provider: NAME or ClusterOAuthProvider/NAME, or OAuthProvider/NAME (in -n's "
        "namespace); it must have spec.issuer",
    )
    where.add_argument(
        "--client",
        metavar="NAME",
        help="take them from the OAuthClient NAME (in -n's namespace): its provider's or its "
        "own issuer and CA bundle, its scopes and client authentication, and its credentials "
        "Secret and keys (then --secret is not needed)",
    )
    parser.add_argument("--client-id", required=True)
    parser.add_argument(
        "--client-secret-file",
        default=None,
        help="file holding the client secret (omit for a public client)",
    )
    parser.add_argument(
        "--client-authentication",
        default=None,
        choices=[a.value for a in LOGIN_AUTHS],
        help="default: the OAuthClient's or provider's, else client_secret_post with a secret "
        "and none without",
    )
    parser.add_argument(
        "--client-certificate-file",
        default=None,
        help="PEM client certificate for mutual TLS (RFC 8705; with --client-key-file)",
    )
    parser.add_argument("--client-key-file", default=None, help="its PEM private key")
    parser.add_argument(
        "--scope",
        action="append",
        default=[],
        help="scope to request (repeatable), for example offline_access (default: the "
        "OAuthClient's scopes, or the provider's default scopes)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra authorize parameter (repeatable), for example sub_type=user",
    )
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: any free)")
    parser.add_argument(
        "--no-browser", action="store_true", help="print the URL instead of opening a browser"
    )
    parser.add_argument(
        "--ca-file",
        default=None,
        help="PEM CA bundle for the provider (default: the provider's or OAuthClient's CA "
        "bundle with --provider or --client, else the system's)",
    )
    add_operator_namespace(parser)
    parser.add_argument("--allow-http", action="store_true")
    parser.add_argument(
        "-n",
        "--namespace",
        help="the namespace of the credentials Secret, of --client's OAuthClient and of an "
        "OAuthProvider (default: the context's)",
    )
    parser.add_argument(
        "--secret",
        help="credentials Secret to create or update (with --client: the OAuthClient's "
        "spec.credentialsSecretRef)",
    )
    parser.add_argument("--kubeconfig", default=None)
    theirs = "(with --client: the OAuthClient's)"
    parser.add_argument("--client-id-key", help=f"default: client_id {theirs}")
    parser.add_argument("--client-secret-key", help=f"default: client_secret {theirs}")
    parser.add_argument("--refresh-token-key", help=f"default: refresh_token {theirs}")
    parser.set_defaults(handler=run)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(
    endpoint: str,
    client_id: str,
    redirect_uri: str,
    scopes: list[str],
    state: str,
    challenge: str,
    extra: dict[str, str],
) -> str:
    params = {
        **extra,
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if scopes:
        params["scope"] = " ".join(scopes)
    if "offline_access" in scopes:
        params.setdefault("prompt", "consent")  # OpenID Connect requires it for offline_access
    separator = "&" if urlsplit(endpoint).query else "?"
    return endpoint + separator + urlencode(params)


class _Callback:
    """A one-shot loopback HTTP server that receives the authorization response."""

    def __init__(self) -> None:
        self.result: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1")
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            target = request_line.split(" ")[1] if " " in request_line else "/"
            query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
            if urlsplit(target).path != "/callback" or not ("code" in query or "error" in query):
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            text = b"Login complete. You can close this window.\n"
            if "error" in query:
                text = b"Login failed; see the terminal.\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text
            )
            if not self.result.done():
                self.result.set_result(query)
        finally:
            await writer.drain()
            writer.close()


async def _discover(http: httpx.AsyncClient, issuer: str, origin: str) -> dict[str, Any]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    response = await http.get(url)
    try:
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        endpoints = (document["token_endpoint"], document["authorization_endpoint"])
        if not all(isinstance(endpoint, str) for endpoint in endpoints):
            raise TypeError
    except (httpx.HTTPStatusError, ValueError, KeyError, TypeError):
        raise OAuthError(
            Outcome.NEEDS_HUMAN,
            "DiscoveryFailed",
            f"{url} (HTTP {response.status_code}) is no OpenID discovery document with "
            f"token and authorization endpoints; is {origin} the issuer's URL?",
        ) from None
    if str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise OAuthError(Outcome.NEEDS_HUMAN, "DiscoveryFailed", f"{url} names another issuer")
    return document


async def run(args: argparse.Namespace) -> int:
    args.namespace = args.namespace or default_namespace(args.kubeconfig)
    if problem := check_flags(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2  # a usage error, as argparse's
    if bool(args.client_certificate_file) != bool(args.client_key_file):
        print("error: give both --client-certificate-file and --client-key-file", file=sys.stderr)
        return 1
    client_secret = None
    if args.client_secret_file:
        client_secret = Path(args.client_secret_file).read_text().strip()  # noqa: ASYNC240
    extra = dict(p.split("=", 1) for p in args.param if "=" in p)
    policy = EndpointPolicy(allow_http=args.allow_http)
    kube = None
    try:
        verify = _tls(args, None)  # --ca-file and the client certificate, before anything
        kube = await Kube.connect(args.kubeconfig)
        source = await source_for(args, kube)
        if source.ca_pem:
            verify = _tls(args, source)
        keys = source.keys
        # Before the browser: a grant whose refresh token cannot be stored is wasted, so the
        # API server checks the write (RBAC, admission) first, storing nothing.
        await kube.upsert_secret_data(
            args.namespace, keys.secret_name, {keys.refresh_token: ""}, dry_run=True
        )
        token, creds = await _login(args, source, policy, verify, extra, client_secret)
        if not token.refresh_token:
            raise CommandError(
                "the provider returned no refresh token (did you request offline_access?)"
            )
        data = {keys.client_id: creds.client_id, keys.refresh_token: token.refresh_token}
        if client_secret:
            data[keys.client_secret] = client_secret
        try:
            await kube.upsert_secret_data(args.namespace, keys.secret_name, encode_data(data))
        except Exception as exc:  # whatever failed, the grant must survive
            where = keep_refresh_token(
                args.namespace, keys.secret_name, keys.refresh_token, token.refresh_token
            )
            raise CommandError(
                f"the login succeeded but Secret {args.namespace}/{keys.secret_name} could "
                f"not be written ({exc}); {where}"
            ) from None
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OAuthError as exc:
        print(f"error: {exc.reason}: {exc}", file=sys.stderr)
        return 1
    finally:
        if kube is not None:
            await kube.close()
    print(
        f"stored a refresh token for client {args.client_id} in Secret "
        f"{args.namespace}/{keys.secret_name}",
        file=sys.stderr,
    )
    return 0


def _tls(args: argparse.Namespace, source: Source | None) -> Any:
    """httpx's verify: the system's trust store (True), or a context with --ca-file's or
    the source's CA bundle and the client certificate."""
    ca_pem = source.ca_pem if source else None
    if not (args.ca_file or ca_pem or args.client_certificate_file):
        return True
    import ssl

    try:
        context = ssl.create_default_context(cafile=args.ca_file, cadata=ca_pem)
    except (OSError, ssl.SSLError, ValueError) as exc:
        where = f"--ca-file {args.ca_file}"
        if source is not None:
            where = f"the CA bundle of {source.origin.removeprefix('spec.issuer of ')}"
        raise CommandError(f"{where}: {getattr(exc, 'strerror', None) or exc}") from None
    if args.client_certificate_file:
        try:
            certificate = Path(args.client_certificate_file).read_text()
            key = Path(args.client_key_file).read_text()
            load_client_certificate(context, certificate, key)
        except (OSError, OAuthError) as exc:
            raise CommandError(f"client certificate: {exc}") from None
    return context


async def _login(
    args: argparse.Namespace,
    source: Source,
    policy: EndpointPolicy,
    verify: Any,
    extra: dict[str, str],
    client_secret: str | None,
) -> tuple[Token, Credentials]:
    """Discovery, the browser, and the code exchange."""
    await check_endpoint(source.issuer, policy)
    async with httpx.AsyncClient(verify=verify, timeout=30.0) as http:
        document = await _discover(http, source.issuer, source.origin)
        token_endpoint = document["token_endpoint"]
        await check_endpoint(token_endpoint, policy)
        code, redirect_uri, verifier = await _authorize(args, document, source.scopes, extra)
        creds = Credentials(args.client_id, client_secret)
        form, headers = client_authentication(source.client_auth, creds, token_endpoint, 0.0)
        form.update(
            grant_type="authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=verifier,
        )
        response = await http.post(token_endpoint, data=form, headers=headers)
        if response.status_code != 200:
            raise map_error_response(response.status_code, response.content, None)
        return parse_token_response(response.content, 0.0, 3600.0), creds


async def _authorize(
    args: argparse.Namespace,
    document: dict[str, Any],
    scopes: tuple[str, ...],
    extra: dict[str, str],
) -> tuple[str, str, str]:
    callback = _Callback()
    server = await asyncio.start_server(callback.handle, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    url = authorize_url(
        document["authorization_endpoint"],
        args.client_id,
        redirect_uri,
        list(scopes),
        state,
        challenge,
        extra,
    )
    print(f"Open this URL to log in:\n{url}", file=sys.stderr, flush=True)
    if not args.no_browser:
        webbrowser.open(url)
    try:
        async with server:
            query = await asyncio.wait_for(callback.result, CALLBACK_TIMEOUT)
    except TimeoutError:
        raise OAuthError(Outcome.NEEDS_HUMAN, "LoginTimedOut", "no browser callback") from None
    if query.get("state") != state:
        raise OAuthError(Outcome.NEEDS_HUMAN, "LoginFailed", "the callback's state differs")
    if "error" in query:
        raise OAuthError(Outcome.NEEDS_HUMAN, "LoginFailed", f"provider said {query['error']}")
    return query["code"], redirect_uri, verifier
