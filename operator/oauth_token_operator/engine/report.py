"""What a run reports: the status patch and, when the Ready condition changes (status.is_news),
an Event.
The contents come from pure functions in resource/status.py; this module only writes them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from oauth_token_operator import reasons
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.ports import StatusAPI
from oauth_token_operator.resource import status
from oauth_token_operator.resource.spec import ObjectKey

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, api: StatusAPI, clock: Callable[[], float]) -> None:
        self.api = api
        self.clock = clock

    async def report(
        self,
        key: ObjectKey,
        uid: str,
        generation: int,
        previous: status.Condition | None,
        ready: bool,
        reason: str,
        message: str,
        fields: dict[str, Any] | None = None,
    ) -> status.Condition | None:
        """Patches status, records an Event when the condition changes, and returns the
        condition now in place. A failed patch is logged (the next run writes status again)
        and returns `previous`."""
        condition = status.next_condition(
            previous, ready, reason, message, generation, self.clock()
        )
        if status.is_news(previous, condition):
            # Warning for anything but a token in place, even while Ready stays True.
            kind = "Normal" if reason == reasons.TOKEN_ISSUED else "Warning"
            await self.api.post_event(key, uid, kind, reason, message)
        patch = {
            **(fields or {}),
            "observedGeneration": generation,
            "conditions": [condition.to_dict()],
        }
        try:
            await self.api.patch_status(key, patch)
        except KubeError as exc:
            if not exc.not_found:
                log.warning("could not patch status of %s: %s", key, exc)
            return previous
        return condition
