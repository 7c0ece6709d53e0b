"""Prometheus metrics, served on their own port by prometheus_client."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EXCHANGES = Counter(
    "oauth_token_operator_exchanges",
    "Token endpoint exchanges by result (success, transient, needs_human).",
    ["result"],
)
OUTCOME_UNKNOWN = Counter(
    "oauth_token_operator_exchanges_outcome_unknown",
    "Refresh requests that may have reached the provider but got no answer: if the provider "
    "rotated the refresh token, the grant may need a new login.",
)
ROTATION_PERSIST_SECONDS = Histogram(
    "oauth_token_operator_rotation_persist_seconds",
    "From a rotated refresh token's arrival to its being durable in the credentials Secret: "
    "the window in which a crash loses the grant.",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REUSED_TOKENS = Counter(
    "oauth_token_operator_tokens_reused",
    "Runs that kept a still-valid token in place without calling the provider.",
)
ACTIVE = Gauge(
    "oauth_token_operator_active",
    "1 while this replica acts on OAuthClients, 0 while it stands by for a peer.",
)
ACTIVE.set(1)  # a replica acts unless its peering says otherwise
CLIENTS = Gauge("oauth_token_operator_clients", "OAuthClients known to the operator.")


def serve_metrics(address: str, port: int) -> None:
    start_http_server(port, addr=address)
