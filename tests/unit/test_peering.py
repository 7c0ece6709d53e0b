"""Which of several peered replicas acts: kopf's rule, read from the peering objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from oauth_token_operator.app.peering import priority_for, should_act

NOW = 1_800_000_000.0
ME, MY_PRIORITY = "pod-a/1a2b3c", 100


def peer(priority: int, seen_ago: float = 5, lifetime: int = 60) -> dict[str, Any]:
    seen = datetime.fromtimestamp(NOW - seen_ago, UTC).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


def peering(**peers: Any) -> dict[str, Any]:
    return {"metadata": {"name": "oauth-token-operator"}, "status": peers}


@pytest.mark.parametrize(
    ("peerings", "acts"),
    [
        ([], True),  # no peering object (yet)
        ([peering()], True),
        ([peering(**{ME: peer(MY_PRIORITY)})], True),  # only ourselves
        ([peering(other=peer(MY_PRIORITY - 1))], True),  # a lower priority waits for us
        ([peering(other=peer(MY_PRIORITY + 1))], False),  # a higher one acts
        ([peering(other=peer(MY_PRIORITY))], False),  # a tie pauses everyone, as in kopf
        ([peering(other=peer(MY_PRIORITY + 1, seen_ago=61))], True),  # dead: past its lifetime
        ([peering(other=peer(MY_PRIORITY + 1, lifetime=0))], True),  # removed itself
        ([peering(other={"priority": 999})], True),  # unreadable: ignored, as kopf does
        ([peering(other="garbage")], True),
        # Namespaced mode: one KopfPeering per namespace; any of them can pause us.
        ([peering(), peering(other=peer(MY_PRIORITY + 1))], False),
    ],
)
def test_should_act(peerings: list[dict[str, Any]], acts: bool) -> None:
    assert should_act(peerings, ME, MY_PRIORITY, NOW) is acts


def test_the_oldest_replica_has_the_highest_priority() -> None:
    older, newer = priority_for(NOW), priority_for(NOW + 0.000_002)
    assert older > newer > 0
    assert older < 2**53  # exact in any JSON reader
