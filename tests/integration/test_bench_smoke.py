"""The convergence bench at 10 clients, so that the benches cannot rot: it starts its own
control plane and token endpoint, converges, restarts the operator and finds nothing to
do. No figure is asserted beyond what a correct run must show (bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.integration


def test_the_convergence_bench_runs_at_ten_clients(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_convergence.py"),
            "--clients",
            "10",
            "--quiet",
            "--idle-window",  # the idle phase is measured, not checked: keep it short
            "2",
            "--restart-watch",
            "1",
            "--output",
            str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(output.read_text())
    assert result["convergence"]["converged"] is True
    assert result["convergence"]["labelled_secrets"] == 10
    assert result["convergence"]["token_requests"] == 10
    assert result["restart"]["token_requests"] == 0  # a restart is free
    assert result["minimal"]["clients_per_second"] > 0
