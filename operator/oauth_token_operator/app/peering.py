"""Which replica acts, when several share a kopf peering.

kopf pauses only its own watch streams on a standby replica. The operator's scheduler would
go on refreshing every client it already knew: client-credentials tokens exchanged twice,
and clients deleted meanwhile never forgotten (a paused stream hears of nothing). So the
operator reads the same peering objects and stands by exactly when kopf pauses: while a live
peer has a priority at least as high as its own. A standby replica holds no clients; taking
over, it lists them and starts the way a restarted operator does (from the Secrets, with no
token requests for valid tokens)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from oauth_token_operator import metrics

log = logging.getLogger(__name__)

# How often a replica reads the peering objects: the longest a handover waits on us after
# kopf has seen the active peer leave (a stop removes it at once; a crash after its 60 s
# lifetime).
POLL_INTERVAL = 2.0
# Priorities count down from here in microseconds of start time, and stay below 2**53 so
# that any JSON reader keeps them exact.
_PRIORITY_BASE = 9_000_000_000_000_000


def priority_for(started_at: float) -> int:
    """The oldest replica wins: one that joins later (a scale-up, a rollout's new pod) stands
    by instead of taking over in the middle of runs. Microseconds keep ties (which pause
    every peer, in kopf) out of reach."""
    return _PRIORITY_BASE - int(started_at * 1_000_000)


def should_act(
    peerings: Iterable[Mapping[str, Any]], identity: str, priority: int, now: float
) -> bool:
    """False while any live peer but us has a priority at least ours: kopf's own rule
    (peering.process_peering_event), applied to every peering object we belong to."""
    for body in peerings:
        peers = body.get("status") or {}
        for peer_id, peer in peers.items():
            if peer_id == identity or not isinstance(peer, Mapping):
                continue
            try:
                seen = datetime.fromisoformat(str(peer["lastseen"])).timestamp()
                lifetime = float(peer.get("lifetime", 60))
                peer_priority = int(peer.get("priority", 0))
            except (KeyError, TypeError, ValueError):
                continue  # kopf treats what it cannot parse as gone, too
            if seen + lifetime > now and peer_priority >= priority:
                return False
    return True


async def follow(
    read: Callable[[], Awaitable[list[dict[str, Any]]]],
    identity: str,
    priority: int,
    on_change: Callable[[bool], Awaitable[None]],
    clock: Callable[[], float],
    interval: float = POLL_INTERVAL,
) -> None:
    """Reads the peering objects every `interval` seconds and calls on_change(acting) when
    this replica starts or stops acting. Runs until cancelled; a failed read or change keeps
    the current state and is tried again at the next poll."""
    acting = True  # until told otherwise: kopf starts its watches before it hears of peers
    while True:
        try:
            now_acting = should_act(await read(), identity, priority, clock())
            if now_acting != acting:
                log.info(
                    "%s",
                    "taking over from the peers: no live peer with a higher priority"
                    if now_acting
                    else "standing by: a peer with a higher priority acts",
                )
                await on_change(now_acting)
                acting = now_acting
                metrics.ACTIVE.set(int(acting))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the apiserver may be away: next time
            log.warning("could not follow the peering: %s", exc)
        await asyncio.sleep(interval)
