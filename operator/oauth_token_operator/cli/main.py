"""Command line: `run` (the operator), `token` (one exchange, for debugging a client) and
`login` (authorization code + PKCE, to obtain the refresh token a refresh_token client
needs)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from oauth_token_operator.app.logs import configure_logging
from oauth_token_operator.app.peering import priority_for
from oauth_token_operator.engine.config import Peering, Settings
from oauth_token_operator.kube.ports import SERVICE_ACCOUNT_NAMESPACE
from oauth_token_operator.oauth.types import EndpointPolicy
from oauth_token_operator.resource.parse import parse_duration
from oauth_token_operator.resource.policy import Guard, Tenancy
from oauth_token_operator.resource.spec import SpecError

T = TypeVar("T")


def _pod_namespace() -> str | None:
    """The namespace of the pod this runs in (its ServiceAccount's mount); None outside one."""
    with contextlib.suppress(OSError), open(SERVICE_ACCOUNT_NAMESPACE) as file:
        return file.read().strip() or None
    return None


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"OAUTH_TOKEN_OPERATOR_{name}", default)


def _typed(name: str, convert: Callable[[str], T]) -> Callable[[str], T]:
    """argparse's type for an option that OAUTH_TOKEN_OPERATOR_<name> can set. Its default
    stays the variable's raw string, which argparse converts only when the command runs (a
    bad value never breaks --help), and a bad value is reported as argparse reports one,
    naming the variable when it came from there."""

    def typed(value: str) -> T:
        try:
            return convert(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            variable = f"OAUTH_TOKEN_OPERATOR_{name}"
            source = f" (from {variable})" if os.environ.get(variable) == value else ""
            hint = ""
            if source and name.endswith("_PORT") and value.startswith("tcp://"):
                # Kubernetes service links: a Service named oauth-token-operator-metrics
                # gives the pods beside it OAUTH_TOKEN_OPERATOR_METRICS_PORT=tcp://...
                service = f"oauth-token-operator-{name.removesuffix('_PORT').lower()}"
                hint = (
                    f"; a Service named {service} sets it in pods that do not say "
                    "enableServiceLinks: false"
                )
            raise argparse.ArgumentTypeError(
                f"{value!r} is not valid{source}: {exc}{hint}"
            ) from None

    return typed


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{number} is less than 1")
    return number


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {value!r}") from None


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


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


def _logging_options(level: str, format_: str) -> argparse.ArgumentParser:
    """A parent parser of its own for each command: subparsers share a parent's Action
    objects, so one command's set_defaults() would change every other's defaults."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--log-level",
        default=level,
        type=_typed("LOG_LEVEL", _one_of("debug", "info", "warning", "error")),
        help="debug, info, warning or error",
    )
    options.add_argument(
        "--log-format",
        default=format_,
        type=_typed("LOG_FORMAT", _one_of("plain", "json")),
        help="plain or json",
    )
    return options


def _one_of(*choices: str) -> Callable[[str], str]:
    """Like argparse's choices, but also for a default from the environment (argparse
    checks choices on the command line only), and case-insensitive."""

    def choice(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"choose from {', '.join(choices)}")
        return value.lower()

    return choice


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oauth-token-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the operator",
        parents=[_logging_options(_env("LOG_LEVEL", "info"), _env("LOG_FORMAT", "plain"))],
    )
    run.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="watch this namespace (repeatable; default: all)",
    )
    run.add_argument(
        "--operator-namespace",
        default=_env("OPERATOR_NAMESPACE") or _pod_namespace(),
        help="the operator's own namespace, where ClusterOAuthProviders' CA bundle Secrets "
        "are (default: the pod's namespace)",
    )
    _add_endpoint_options(run)
    run.add_argument(
        "--tenancy",
        type=_typed("TENANCY", _one_of(*(t.value for t in Tenancy))),
        default=_env("TENANCY", Guard.tenancy.value),
        help="shared (default): OAuthClient authors are not trusted with their namespace's "
        "Secrets and ServiceAccounts (Secrets and ServiceAccounts opt in, inline endpoints "
        "must be --trusted-endpoints); single: every author is trusted (README: Threat model)",
    )
    run.add_argument(
        "--trusted-endpoints",
        type=_csv,
        default=_csv(_env("TRUSTED_ENDPOINTS")),
        help="comma-separated issuer or token endpoint URLs that OAuthClients may name "
        "inline in shared tenancy (default: none)",
    )
    run.add_argument(
        "--concurrency",
        type=_typed("CONCURRENCY", _positive_int),
        default=_env("CONCURRENCY", str(Settings.concurrency)),
        help="exchanges and writes in flight at once",
    )
    run.add_argument(
        "--propagation-margin",
        type=_typed("PROPAGATION_MARGIN", _duration),
        default=_env("PROPAGATION_MARGIN", "90s"),
        help="renew at least this long before expiry (kubelet Secret sync)",
    )
    run.add_argument(
        "--drain-timeout",
        type=_typed("DRAIN_TIMEOUT", _duration),
        default=_env("DRAIN_TIMEOUT", "25s"),
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
        "--selector",
        default=_env("SELECTOR"),
        help="a label selector: handle only the OAuthClients it matches (one shard of "
        "several operators; default: all)",
    )
    run.add_argument(
        "--listen-address",
        type=_typed("LISTEN_ADDRESS", _address),
        default=_env("LISTEN_ADDRESS", "0.0.0.0"),  # noqa: S104 (probes and scrapes come from outside)
        help="address the health and metrics listeners bind (127.0.0.1: this host only; "
        ":: for IPv6)",
    )
    run.add_argument(
        "--health-port",
        type=_typed("HEALTH_PORT", _port),
        default=_env("HEALTH_PORT", "8080"),
        help="port for GET /healthz (0: off)",
    )
    run.add_argument(
        "--metrics-port",
        type=_typed("METRICS_PORT", _port),
        default=_env("METRICS_PORT", "9090"),
        help="port for GET /metrics (0: off)",
    )

    from oauth_token_operator.cli import token as tokencmd

    # The commands people type keep the terminal for their results: warnings only.
    tokencmd.add_parser(commands, [_logging_options("warning", "plain")], _add_endpoint_options)
    from oauth_token_operator.cli import login

    login.add_parser(commands, [_logging_options("warning", "plain")])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command == "run":
        return run_operator(args)
    if args.log_level != "debug":
        # Its warnings repeat what the one-line error below says.
        logging.getLogger("kubernetes_asyncio").setLevel(logging.ERROR)
    try:
        result: int = asyncio.run(args.handler(args))
    except Exception as exc:
        message = explain(exc)
        if message is None:
            raise  # a bug: the traceback is what a report needs
        print(f"error: {message}", file=sys.stderr)
        return 1
    return result


def explain(exc: Exception) -> str | None:
    """One line that says what went wrong and what to do, for the everyday failures of the
    commands people type; None for anything else."""
    import aiohttp
    import httpx
    from kubernetes_asyncio.config import ConfigException

    from oauth_token_operator.kube.errors import KubeError

    if isinstance(exc, ConfigException):
        missing = [
            p for p in os.environ.get("KUBECONFIG", "").split(":") if p and not os.path.exists(p)
        ]
        detail = f"{', '.join(missing)} does not exist" if missing else str(exc)
        return f"no usable Kubernetes configuration ({detail}); set KUBECONFIG or --kubeconfig"
    if isinstance(exc, KubeError):
        if exc.unreachable:
            return f"cannot reach the Kubernetes API server ({exc}); is the cluster up?"
        if exc.kind_missing:
            return (
                "the API server does not serve OAuthClients: install the CRD "
                "(kubectl apply -f crds/oauthclients.oauth-token-operator.dev.yaml)"
            )
        if exc.status in (401, 403):
            return f"the API server refused ({exc}); ask for RBAC on this namespace"
        return f"the API server answered {exc}"
    if isinstance(exc, aiohttp.ClientError):
        return f"cannot reach the Kubernetes API server ({exc}); is the cluster up?"
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return f"the TLS certificate of {exc.request.url.host} is not trusted; pass --ca-file"
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach {exc.request.url} ({exc or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return "the loopback port is in use; choose another --port (0: any free port)"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return None


def run_operator(args: argparse.Namespace) -> int:
    from oauth_token_operator.app.process import run
    from oauth_token_operator.metrics import serve_metrics

    namespaces = tuple(args.namespaces or _csv(_env("NAMESPACES")))
    # Our own name for the peering record, not kopf's user@host guess (which looks the uid
    # up in /etc/passwd); unique per process, as two replicas must never share one.
    peer_identity = f"{args.identity}/{secrets.token_hex(3)}"
    peering = (
        Peering(args.peering, peer_identity, priority_for(time.time())) if args.peering else None
    )
    settings = Settings(
        namespaces=namespaces,
        operator_namespace=args.operator_namespace or None,
        endpoint_policy=EndpointPolicy(args.allow_http, frozenset(args.allowed_hosts)),
        guard=Guard(Tenancy(args.tenancy), frozenset(args.trusted_endpoints)),
        concurrency=args.concurrency,
        propagation_margin=args.propagation_margin,
        drain_timeout=args.drain_timeout,
        identity=args.identity,
        peering=peering,
        selector=args.selector,
    )
    if args.metrics_port:
        serve_metrics(args.listen_address, args.metrics_port)
    liveness = (
        f"http://{_url_host(args.listen_address)}:{args.health_port}/healthz"
        if args.health_port
        else None
    )
    return run(settings, peer_identity, liveness)


if __name__ == "__main__":
    sys.exit(main())
