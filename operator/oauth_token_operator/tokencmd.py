"""`token`: one exchange for an OAuthClient in the cluster, exactly as the operator would do
it, to debug a client. Prints what the provider granted; the access token itself only with
--print-token. A rotated refresh token is written back before the command returns, as the
operator does, so debugging never loses the grant."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .kube import Kube, decode_data, rfc3339
from .oauth import EndpointPolicy, OAuthError, TokenClient, jwt_claims
from .refresh import persist_refresh_token
from .secret_bodies import credentials_from
from .spec import API_GROUP, API_VERSION, PLURAL, GrantType, SpecError, parse


def add_parser(
    commands: Any,
    parents: list[argparse.ArgumentParser],
    add_endpoint_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = commands.add_parser(
        "token", help="perform one exchange for an OAuthClient", parents=parents
    )
    parser.add_argument("name", help="the OAuthClient's name")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument(
        "--print-token",
        action="store_true",
        help="print the access token itself on standard output",
    )
    add_endpoint_options(parser)
    parser.set_defaults(handler=run, log_level="warning")  # keep the terminal for results


async def run(args: argparse.Namespace) -> int:
    kube = await Kube.connect(args.kubeconfig)
    tokens = TokenClient(EndpointPolicy(args.allow_http, frozenset(args.allowed_hosts)))
    try:
        body = await kube.get_object(API_GROUP, API_VERSION, PLURAL, args.namespace, args.name)
        if body is None:
            print(f"error: OAuthClient {args.namespace}/{args.name} not found", file=sys.stderr)
            return 1
        spec = parse(body)
        secret = await kube.get_secret(spec.key.namespace, spec.credentials.secret_name)
        if secret is None:
            print(f"error: Secret {spec.credentials.secret_name} not found", file=sys.stderr)
            return 1
        creds = credentials_from(spec, secret)
        ca_pem = None
        if spec.ca_bundle:
            ca_pem = decode_data(await kube.get_secret(spec.key.namespace, spec.ca_bundle[0])).get(
                spec.ca_bundle[1]
            )
        token = await tokens.exchange(spec.request, creds, spec.refresh.default_lifetime, ca_pem)
        rotated = (
            spec.request.grant_type is GrantType.REFRESH_TOKEN
            and token.refresh_token
            and token.refresh_token != creds.refresh_token
        )
        if rotated:
            assert token.refresh_token is not None
            await persist_refresh_token(kube, spec, secret, token.refresh_token)
    except (SpecError, OAuthError) as exc:
        reason = getattr(exc, "reason", "InvalidSpec")
        print(f"error: {reason}: {exc}", file=sys.stderr)
        return 1
    finally:
        await tokens.aclose()
        await kube.close()
    summary = {
        "tokenType": token.token_type,
        "expiresAt": rfc3339(token.expires_at),
        "scope": token.scope,
        "refreshTokenRotated": bool(rotated),
        "claims": jwt_claims(token.access_token),
    }
    print(json.dumps(summary, indent=2), file=sys.stderr)
    if args.print_token:
        print(token.access_token)
    return 0
