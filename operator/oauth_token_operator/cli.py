"""Command line: `run` (the operator), `token` (one exchange, for debugging a client) and
`login` (authorization code + PKCE, to obtain the refresh token a refresh_token client
needs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from .config import Settings
from .logs import configure_logging
from .oauth import EndpointPolicy
from .spec import SpecError, parse_duration

T = TypeVar("T")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"OAUTH_TOKEN_OPERATOR_{name}", default)


def _env_as(name: str, default: str, convert: Callable[[str], T]) -> T:
    """An environment default converted up front, with an error that names the variable."""
    value = _env(name, default)
    try:
        return convert(value)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        hint = ""
        if name.endswith("_PORT") and value.startswith("tcp://"):
            # Kubernetes service links: a Service named oauth-token-operator-metrics gives
            # the pods beside it OAUTH_TOKEN_OPERATOR_METRICS_PORT=tcp://10.0.0.1:9090.
            service = f"oauth-token-operator-{name.removesuffix('_PORT').lower()}"
            hint = (
                f"; a Service named {service} sets it in pods that do not say "
                "enableServiceLinks: false"
            )
        sys.exit(f"error: OAUTH_TOKEN_OPERATOR_{name}={value!r} is not valid ({exc}){hint}")


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number")
    return port


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _duration(value: str) -> float:
    try:
        return parse_duration(value, "duration")
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-http",
        action="store_true",
        default=_env("ALLOW_HTTP").lower() in ("1", "true", "yes"),
        help="allow plain-http token endpoints (tests, in-cluster providers)",
    )
    parser.add_argument(
        "--allowed-hosts",
        type=_csv,
        default=_csv(_env("ALLOWED_HOSTS")),
        help="comma-separated hosts that token endpoints may use (default: any)",
    )


def build_parser() -> argparse.ArgumentParser:
    logging_options = argparse.ArgumentParser(add_help=False)
    logging_options.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    logging_options.add_argument(
        "--log-format", default=_env("LOG_FORMAT", "plain"), choices=["plain", "json"]
    )
    parser = argparse.ArgumentParser(prog="oauth-token-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator", parents=[logging_options])
    run.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="watch this namespace (repeatable; default: all)",
    )
    _add_endpoint_options(run)
    run.add_argument(
        "--concurrency",
        type=int,
        default=_env_as("CONCURRENCY", "16", int),
        help="exchanges and writes in flight at once",
    )
    run.add_argument(
        "--propagation-margin",
        type=_duration,
        default=_env_as("PROPAGATION_MARGIN", "90s", _duration),
        help="renew at least this long before expiry (kubelet Secret sync)",
    )
    run.add_argument(
        "--drain-timeout",
        type=_duration,
        default=_env_as("DRAIN_TIMEOUT", "25s", _duration),
        help="on SIGTERM, how long runs in progress may take before they are cancelled "
        "(a refresh already sent always finishes and persists); keep it below the pod's "
        "terminationGracePeriodSeconds",
    )
    run.add_argument(
        "--identity",
        default=_env("IDENTITY") or f"operator@{socket.gethostname()}",
        help="who this replica is in refresh claims on credentials Secrets (the chart "
        "passes the pod name)",
    )
    run.add_argument(
        "--peering",
        default=_env("PEERING") or None,
        help="kopf peering name for several replicas (default: standalone)",
    )
    run.add_argument(
        "--health-port",
        type=_port,
        default=_env_as("HEALTH_PORT", "8080", _port),
        help="port for GET /healthz (0: off)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=_env_as("METRICS_PORT", "9090", _port),
        help="port for GET /metrics (0: off)",
    )

    from . import tokencmd

    tokencmd.add_parser(commands, [logging_options], _add_endpoint_options)
    from . import login

    login.add_parser(commands, [logging_options])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command == "run":
        return run_operator(args)
    result: int = asyncio.run(args.handler(args))
    return result


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    from .handlers import registry_for
    from .metrics import serve_metrics

    namespaces = tuple(args.namespaces or _csv(_env("NAMESPACES")))
    settings = Settings(
        namespaces=namespaces,
        endpoint_policy=EndpointPolicy(args.allow_http, frozenset(args.allowed_hosts)),
        concurrency=args.concurrency,
        propagation_margin=args.propagation_margin,
        drain_timeout=args.drain_timeout,
        identity=args.identity,
    )
    if args.metrics_port:
        serve_metrics(args.metrics_port)
    logging.getLogger(__name__).info(
        "starting: namespaces=%s allow_http=%s allowed_hosts=%s concurrency=%d",
        list(namespaces) or "all",
        args.allow_http,
        args.allowed_hosts or "any",
        args.concurrency,
    )
    kopf.run(
        registry=registry_for(settings),
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=args.peering is None,
        peering_name=args.peering,
        # Our own name for the peering record, not kopf's user@host guess (which looks the
        # uid up in /etc/passwd); unique per process, as two replicas must never share one.
        # (kopf's Identity is a NewType of str that kopf does not export.)
        identity=cast(Any, f"{args.identity}/{secrets.token_hex(3)}"),
        # kopf pauses every peer but the one with the highest priority; equal priorities
        # would pause them all, so each replica draws its own.
        priority=secrets.randbelow(1_000_000) + 1 if args.peering else 0,
        liveness_endpoint=(
            f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
