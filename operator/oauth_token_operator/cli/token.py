"""`token`: one exchange for an OAuthClient in the cluster, exactly as the operator would do
it, to debug a client. Prints what the provider granted; the access token itself only with
--print-token. A rotated refresh token is written back before the command returns, as the
operator does, so debugging never loses the grant. A client with spec.providerRef gets its
provider's endpoint, CA and defaults as in the operator; a ClusterOAuthProvider's CA bundle
Secret is read in --operator-namespace."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.cli.reads import CommandError, add_operator_namespace, read_as_user
from oauth_token_operator.cli.rescue import keep_refresh_token
from oauth_token_operator.exchange.custody import ClaimHeld, Holder
from oauth_token_operator.exchange.exchanger import Exchanger, read_inputs
from oauth_token_operator.exchange.keyless import ServiceAccountAssertions
from oauth_token_operator.exchange.providers import PLURALS, resolve
from oauth_token_operator.kube.client import Kube, default_namespace
from oauth_token_operator.oauth.client import TokenClient
from oauth_token_operator.oauth.protocol import jwt_claims
from oauth_token_operator.oauth.types import CLUSTER_PROVIDER_KIND, EndpointPolicy, OAuthError
from oauth_token_operator.resource.parse import parse
from oauth_token_operator.resource.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    OAuthClientSpec,
    SpecError,
)
from oauth_token_operator.wire import rfc3339

# How long `token` waits for someone else's refresh of the same refresh token to end.
CLAIM_WAIT = 60.0
CLAIM_POLL = 1.0


def add_parser(
    commands: Any,
    parents: list[argparse.ArgumentParser],
    add_endpoint_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = commands.add_parser(
        "token", help="perform one exchange for an OAuthClient", parents=parents
    )
    parser.add_argument("name", help="the OAuthClient's name")
    parser.add_argument(
        "-n", "--namespace", help="the OAuthClient's namespace (default: the context's)"
    )
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument(
        "--print-token",
        action="store_true",
        help="print the access token itself on standard output",
    )
    add_operator_namespace(parser)
    add_endpoint_options(parser)
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    args.namespace = args.namespace or default_namespace(args.kubeconfig)
    kube = await Kube.connect(args.kubeconfig)
    tokens = TokenClient(EndpointPolicy(args.allow_http, frozenset(args.allowed_hosts)))
    reads: _CAReads | None = None
    try:
        body = await kube.get_object(API_GROUP, API_VERSION, PLURAL, args.namespace, args.name)
        if body is None:
            print(f"error: OAuthClient {args.namespace}/{args.name} not found", file=sys.stderr)
            return 1
        spec = await _resolve(kube, parse(body), args.operator_namespace)
        # The operator's own path: the same inputs, the same refresh claim, the same custody
        # of a rotated refresh token.
        exchanger = Exchanger(
            kube, tokens, Holder.for_cli(), assertions=ServiceAccountAssertions(kube)
        )
        deadline = time.monotonic() + CLAIM_WAIT
        reads = _CAReads(kube, spec, args.operator_namespace)
        while True:
            inputs = await read_inputs(reads, kube, spec)
            try:
                result = await exchanger.exchange(spec, inputs)
                break
            except ClaimHeld as held:
                # The operator (or another `token`) is refreshing: its turn ends within
                # seconds, then ours uses the refresh token it persisted.
                if time.monotonic() > deadline:
                    raise
                print(f"waiting: {held.message}", file=sys.stderr)
                await asyncio.sleep(CLAIM_POLL)
    except (SpecError, OAuthError) as exc:
        if isinstance(exc, OAuthError) and exc.rotated_refresh_token:
            _keep_unpersisted(spec, exc.rotated_refresh_token)
        reason = getattr(exc, "reason", reasons.INVALID_SPEC)
        hint = ""
        if reason == reasons.INVALID_CA_BUNDLE and reads and reads.missing_in_home:
            hint = (
                f"; if the operator runs in another namespace than {args.operator_namespace}, "
                "say which with --operator-namespace"
            )
        print(f"error: {reason}: {exc}{hint}", file=sys.stderr)
        return 1
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await tokens.aclose()
        await kube.close()
    token = result.token
    if not result.persisted:
        assert token.refresh_token is not None
        return _keep_unpersisted(spec, token.refresh_token)
    summary = {
        "tokenType": token.token_type,
        "expiresAt": rfc3339(token.expires_at),
        "scope": token.scope,
        "refreshTokenRotated": result.rotated,
        "claims": jwt_claims(token.access_token),
    }
    print(json.dumps(summary, indent=2), file=sys.stderr)
    if args.print_token:
        print(token.access_token)
    return 0


async def _resolve(kube: Kube, spec: OAuthClientSpec, home: str) -> OAuthClientSpec:
    """The client's provider in place, read as the user (who may not be allowed to)."""
    endpoint = spec.request.endpoint
    if endpoint.provider is None:
        return spec
    return await read_as_user(
        resolve(kube, spec, home),
        f"{endpoint.provider_ref}, the provider of OAuthClient {spec.key}",
        "`token` reads it as you: ask for get on it",
        PLURALS[endpoint.provider_kind],
    )


class _CAReads:
    """The SecretAPI of read_inputs, whose refused read of the CA bundle Secret (for a
    ClusterOAuthProvider in the operator's namespace, which the user may not read) says
    whose it is, and which notes a ClusterOAuthProvider's CA bundle Secret missing in `home`
    (the operator's namespace may be another)."""

    def __init__(self, kube: Kube, spec: OAuthClientSpec, home: str) -> None:
        self._kube, self._spec, self._home = kube, spec, home
        self.missing_in_home = False

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        ca = self._spec.ca_secret()
        if ca is None or (namespace, name) != ca[:2]:
            return await self._kube.get_secret(namespace, name)
        endpoint = self._spec.request.endpoint
        whose = f"OAuthClient {self._spec.key}"
        if self._spec.provider_ca is not None:
            whose = endpoint.provider_ref
        secret = await read_as_user(
            self._kube.get_secret(namespace, name),
            f"the CA bundle Secret {namespace}/{name} of {whose}",
            "`token` reads it as you: ask for get on that Secret",
        )
        cluster = self._spec.provider_ca is not None and (
            endpoint.provider_kind == CLUSTER_PROVIDER_KIND
        )
        self.missing_in_home = secret is None and cluster and namespace == self._home
        return secret

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._kube.create_secret(namespace, body)

    async def replace_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._kube.replace_secret(namespace, body)


def _keep_unpersisted(spec: OAuthClientSpec, refresh_token: str) -> int:
    """The provider rotated the refresh token but the Secret could not be written."""
    ns, name = spec.key.namespace, spec.credentials.secret_name
    where = keep_refresh_token(ns, name, spec.credentials.refresh_token, refresh_token)
    print(
        f"error: {reasons.REFRESH_TOKEN_NOT_PERSISTED}: the provider rotated the refresh token "
        f"but Secret {ns}/{name} could not be updated; {where}",
        file=sys.stderr,
    )
    return 1
