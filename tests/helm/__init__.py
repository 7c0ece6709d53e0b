"""The helm CLI for tests, built from the Go module in this directory by build.sh, and the
chart rendered with it."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.paths import CHART
from tests.support.cached_build import run_build

_BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"


@functools.cache
def helm_binary() -> Path:
    """The helm binary (built on first use; a warm cache costs nothing)."""
    return run_build(_BUILD_SCRIPT, "helm-build.lock")


def render_chart(release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with `--set` values, as a list of objects."""
    sets = [arg for value in values for arg in ("--set", value)]
    rendered = subprocess.run(
        [str(helm_binary()), "template", release, str(CHART), "--namespace", namespace, *sets],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def run_helm(
    kubeconfig: Path | None, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """helm ARGS against a test cluster (kubeconfig None: no cluster, e.g. `helm template`);
    with check, a failure shows helm's output."""
    cluster = [f"--kubeconfig={kubeconfig}"] if kubeconfig is not None else []
    result = subprocess.run(
        [str(helm_binary()), *cluster, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result
