"""Runs a project build script (tests/controlplane/build.sh, tests/helm/build.sh) that
builds into ~/.cache/oauth-token-operator and prints its result path."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

# A cold build compiles Kubernetes or helm from Go modules: minutes on a small machine.
BUILD_TIMEOUT = 30 * 60


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "oauth-token-operator"
    cache = Path(os.environ.get("OAUTH_TOKEN_OPERATOR_CACHE", default))
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def run_build(script: Path, lock_name: str) -> Path:
    """Runs `script` (a no-op on a warm cache) and returns the last path it prints.

    A file lock serialises concurrent callers (pytest-xdist workers, parallel sessions), so
    only one compiles while the others wait and then find the cached result. stderr is
    inherited so that a cold build's progress is visible with `pytest -s`.
    """
    with (cache_dir() / lock_name).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            [str(script)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT,
        )
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])
