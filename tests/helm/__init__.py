"""The helm CLI for tests, built from the Go module in this directory by build.sh."""

from __future__ import annotations

import fcntl
import functools
import os
import subprocess
from pathlib import Path

_BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
# A cold build compiles helm and its Kubernetes dependencies: minutes on a small machine.
BUILD_TIMEOUT = 30 * 60


@functools.cache
def helm_binary() -> Path:
    """Runs build.sh (a no-op on a warm cache) and returns the helm binary it prints.

    A file lock serialises concurrent callers (pytest-xdist workers, parallel sessions), so
    only one of them compiles while the others wait and then find the cached binary.
    """
    cache = Path(
        os.environ.get("OAUTH_TOKEN_OPERATOR_CACHE", Path.home() / ".cache/oauth-token-operator")
    )
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "helm-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # stderr is inherited so that a cold build's progress is visible with `pytest -s`.
        result = subprocess.run(
            [str(_BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT,
        )
    if result.returncode != 0:
        raise RuntimeError(f"{_BUILD_SCRIPT} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])
