"""Start-up's objects are frozen out of the garbage collector's walk once per process, never
again: a later freeze would also take clients' objects, and those of them that became part
of a garbage cycle would never be freed."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import gc
from oauth_token_operator.app.handlers import freeze_start_up_objects

freeze_start_up_objects()
frozen = gc.get_freeze_count()
clients = [{"name": str(i), "self": None} for i in range(10_000)]
for client in clients:
    client["self"] = client  # cycles, as client state has
freeze_start_up_objects()  # the start-up handler again: kopf started over
print(frozen, gc.get_freeze_count())
"""


def test_start_up_objects_are_frozen_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )
    first, second = map(int, done.stdout.split())
    assert first > 10_000  # the imports: modules, classes, functions
    assert second == first
