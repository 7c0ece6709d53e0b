"""Prometheus metrics, served on their own port by prometheus_client.

Per-client series are not kept in prometheus_client's children (some 800 bytes each, 40 MB
for five series of 10,000 clients): they are made at scrape time from the operator's own
memory of its clients (publish_clients), so a deleted client's series are gone with it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
SECRET_READS = Counter(
    "oauth_token_operator_secret_reads",
    "Secret reads by runs, by where they were answered from (memory, api).",
    ["source"],
)
SECRET_FETCHES = Counter(
    "oauth_token_operator_secret_fetches",
    "Secret bodies read with a GET because the metadata watch showed a change (or a "
    "deletion to confirm) of a Secret that a client uses; other Secrets are never read.",
)
EXCHANGE_SECONDS = Histogram(
    "oauth_token_operator_exchange_duration_seconds",
    "Time from sending a token request to its outcome, by result.",
    ["result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RUN_START_DELAY_SECONDS = Histogram(
    "oauth_token_operator_run_start_delay_seconds",
    "How long after its due time each run started. Runs that start seconds late mean the "
    "replica carries more clients than it can refresh on time: raise --concurrency or shard.",
    buckets=RUN_BUCKETS,
)
RUN_SECONDS = Histogram(
    "oauth_token_operator_run_duration_seconds",
    "How long one run took (reads, the exchange, writes and status), each holding one of "
    "the --concurrency slots.",
    buckets=RUN_BUCKETS,
)


@dataclass(frozen=True)
class ClientSample:
    namespace: str
    name: str
    ready: bool | None  # None: no run yet and no status to go by
    reason: str
    consecutive_failures: int
    needs_login: bool
    issued_at: float | None  # the token in place
    expires_at: float | None
    next_run: float | None


_CLIENT_LABELS = ["namespace", "name"]


class _PerClient(Collector):
    def __init__(self) -> None:
        self.source: Callable[[], Iterable[ClientSample]] | None = None

    def describe(self) -> Iterator[Metric]:
        # The names, so that a scrape asking for other metrics (`?name[]=...`) skips the
        # per-client series: at 10,000 clients they cost some 0.4 s of CPU per scrape.
        return _client_families(())

    def collect(self) -> Iterator[Metric]:
        return _client_families(self.source() if self.source else ())


def _client_families(samples: Iterable[ClientSample]) -> Iterator[Metric]:
    def family(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"oauth_token_operator_{name}", doc, labels=[*_CLIENT_LABELS, *extra]
        )

    ready = family("client_ready", "1 if the OAuthClient is Ready, else 0; by reason.", ("reason",))
    failures = family("client_consecutive_failures", "Failed runs since the last success.")
    login = family(
        "client_needs_login",
        "1 while the provider refuses the refresh token (invalid_grant): a person must log in.",
    )
    issued = family(
        "token_issued_timestamp_seconds", "When the token in the output Secret was issued."
    )
    expires = family(
        "token_expiration_timestamp_seconds", "When the token in the output Secret expires."
    )
    next_run = family(
        "next_refresh_timestamp_seconds", "When the operator will next look at the client."
    )
    for sample in samples:
        labels = [sample.namespace, sample.name]
        if sample.ready is not None:
            ready.add_metric([*labels, sample.reason], float(sample.ready))
        failures.add_metric(labels, sample.consecutive_failures)
        login.add_metric(labels, float(sample.needs_login))
        if sample.issued_at is not None:
            issued.add_metric(labels, sample.issued_at)
        if sample.expires_at is not None:
            expires.add_metric(labels, sample.expires_at)
        if sample.next_run is not None:
            next_run.add_metric(labels, sample.next_run)
    yield from (ready, failures, login, issued, expires, next_run)


_PER_CLIENT = _PerClient()
REGISTRY.register(_PER_CLIENT)


def publish_clients(source: Callable[[], Iterable[ClientSample]] | None) -> None:
    """Where the per-client series come from at scrape time (called from the scrape
    thread: the source must only read)."""
    _PER_CLIENT.source = source


def serve_metrics(address: str, port: int) -> None:
    start_http_server(port, addr=address)
