"""The shape of the package. The layer rule lives once, in pyproject.toml's import-linter
contracts (layers, checked on indirect imports too, and no I/O library in the pure
modules); scripts/test runs lint-imports. These tests show the contracts catching a wrong
import in a copy of the package, and keep the README's list of packages and modules true."""

from __future__ import annotations

import ast
import graphlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import PACKAGE, REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(source_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_its_contracts() -> None:
    result = lint_imports(REPO / "operator")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        # An upward import, direct: the Secret bodies reaching for the run.
        ("resource/secret_bodies.py", "from oauth_token_operator.engine import run", "Layers"),
        # An upward import from the bottom layer to the top one.
        ("oauth/proxies.py", "from oauth_token_operator.cli import reads", "Layers"),
        # A pure module growing I/O.
        ("engine/decide.py", "import aiohttp", "Pure modules"),
        ("resource/status.py", "from oauth_token_operator.oauth import client", "Pure modules"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    copy = tmp_path / "oauth_token_operator"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout[-3000:]


def design_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("## Design") : readme.index("## Development")]


def test_the_readme_lists_every_package_and_module() -> None:
    """The design section names each layer package (`oauth/`) and each module in it, so
    the list cannot drift from the tree."""
    named = set(re.findall(r"`([a-z_]+/?)`", design_section()))
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.stem.startswith("__"):
            continue
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 2:
            assert f"{relative.parts[0]}/" in named, f"README Design misses {relative.parts[0]}/"
        assert path.stem in named, f"README Design misses {relative}"


# "No module over ~400 lines" (CONTRIBUTING.md): the four that are a little over
# (engine/run, oauth/client, kube/client, resource/parse) must not grow further unnoticed.
MAX_LINES = 460


def test_no_module_is_much_over_four_hundred_lines() -> None:
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_import_cycles_between_modules() -> None:
    """Layers forbid upward imports; this forbids cycles inside a layer too (module level,
    lazy imports in functions included)."""
    graph: dict[str, set[str]] = {}
    modules = {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
    }
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module.removeprefix("oauth_token_operator").lstrip(".")
                for alias in node.names:
                    for candidate in (f"{base}.{alias.name}".lstrip("."), base):
                        if candidate in modules:
                            found.add(candidate)
                            break
        graph[name] = found - {name}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError
