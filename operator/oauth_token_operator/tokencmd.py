"""`token`: one exchange for an OAuthClient in the cluster, exactly as the operator would do
it, to debug a client. Prints what the provider granted; the access token itself only with
--print-token. A rotated refresh token is written back before the command returns, as the
operator does, so debugging never loses the grant."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from . import reasons
from .custody import ClaimHeld, Holder
from .exchange import Exchanger, read_inputs
from .keyless import ServiceAccountAssertions
from .kube import Kube, default_namespace
from .oauth import EndpointPolicy, OAuthError, TokenClient, jwt_claims
from .providers import resolve
from .rescue import keep_refresh_token
from .spec import API_GROUP, API_VERSION, PLURAL, OAuthClientSpec, SpecError, parse
from .wire import rfc3339

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
    add_endpoint_options(parser)
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    args.namespace = args.namespace or default_namespace(args.kubeconfig)
    kube = await Kube.connect(args.kubeconfig)
    tokens = TokenClient(EndpointPolicy(args.allow_http, frozenset(args.allowed_hosts)))
    try:
        body = await kube.get_object(API_GROUP, API_VERSION, PLURAL, args.namespace, args.name)
        if body is None:
            print(f"error: OAuthClient {args.namespace}/{args.name} not found", file=sys.stderr)
            return 1
        spec = await resolve(kube, parse(body))  # spec.providerRef: the provider's endpoint
        # The operator's own path: the same inputs, the same refresh claim, the same custody
        # of a rotated refresh token.
        exchanger = Exchanger(
            kube, tokens, Holder.for_cli(), assertions=ServiceAccountAssertions(kube)
        )
        deadline = time.monotonic() + CLAIM_WAIT
        while True:
            inputs = await read_inputs(kube, kube, spec)
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
        print(f"error: {reason}: {exc}", file=sys.stderr)
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
