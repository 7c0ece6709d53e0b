"""Operator-wide settings, from the command line or the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from .oauth import EndpointPolicy


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    endpoint_policy: EndpointPolicy = field(default_factory=EndpointPolicy)
    concurrency: int = 16
    # Kubelet refreshes mounted Secret files after its sync period plus cache TTL (about a
    # minute or two); a token must be renewed at least this long before it expires.
    propagation_margin: float = 90.0
