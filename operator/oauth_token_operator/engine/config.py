"""Operator-wide settings, from the command line or the environment."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from oauth_token_operator.oauth.types import EndpointPolicy
from oauth_token_operator.resource.policy import Guard


@dataclass(frozen=True)
class Peering:
    """kopf peering of several replicas: the peering object's name, and who this replica
    is in it (unique per process) with its priority (peering.priority_for)."""

    name: str
    identity: str
    priority: int


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    # The operator's own namespace: where a ClusterOAuthProvider's CA bundle Secret is.
    operator_namespace: str | None = None
    endpoint_policy: EndpointPolicy = field(default_factory=EndpointPolicy)
    # Tenancy (resource/policy.py): shared by default, where Secrets and ServiceAccounts opt in and
    # inline endpoints must be trusted ones; single: every OAuthClient author is trusted.
    guard: Guard = field(default_factory=Guard)
    # A slot is held for a whole run (token request, Secret write, status patch), mostly
    # waiting on I/O: at 100 refreshes/s on a 2-core bench machine 16 slots were full (runs
    # started a median 1 s late), 32 were not (0.01 s; bench/README.md).
    concurrency: int = 32
    # Kubelet refreshes mounted Secret files after its sync period plus cache TTL (about a
    # minute or two); a token must be renewed at least this long before it expires.
    propagation_margin: float = 90.0
    # On SIGTERM, runs in progress get this long to finish before they are cancelled; a
    # refresh whose request was sent always finishes and persists (chart: keep it below
    # terminationGracePeriodSeconds).
    drain_timeout: float = 25.0
    # Who takes refresh claims (exchange/custody.py): the pod name in a cluster.
    identity: str = field(default_factory=lambda: f"operator@{socket.gethostname()}")
    peering: Peering | None = None  # None: standalone
    # A label selector: this process handles only the OAuthClients it matches (a shard).
    selector: str = ""
