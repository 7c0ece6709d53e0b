"""Prometheus metrics, served on their own port by prometheus_client."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

EXCHANGES = Counter(
    "oauth_token_operator_exchanges",
    "Token endpoint exchanges by result (success, transient, needs_human).",
    ["result"],
)
REUSED_TOKENS = Counter(
    "oauth_token_operator_tokens_reused",
    "Runs that kept a still-valid token in place without calling the provider.",
)
CLIENTS = Gauge("oauth_token_operator_clients", "OAuthClients known to the operator.")


def serve_metrics(port: int) -> None:
    start_http_server(port)
