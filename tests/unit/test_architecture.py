"""The shape of the package: data flows one way (no import cycles), and the pure modules
stay pure (no Kubernetes client, no HTTP, no kopf), so their logic is testable as tables."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "oauth_token_operator"
PURE = (
    "wire",
    "reasons",
    "spec",
    "status",
    "secret_bodies",
    "templates",
    "decide",
    "schedule",
    "policy",
    "provider_status",
)
IO_MODULES = {"kube", "kubernetes_asyncio", "httpx", "kopf", "aiohttp"}


def imports() -> dict[str, set[str]]:
    """module -> what it imports (package-relative names, and top-level third-party ones)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
        graph[path.stem] = found
    return graph


def test_no_import_cycles() -> None:
    graph = imports()
    local = {module: deps & graph.keys() for module, deps in graph.items()}
    graphlib.TopologicalSorter(local).prepare()  # raises CycleError


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module: str) -> None:
    assert not imports()[module] & IO_MODULES


def test_nothing_below_the_domain_imports_it() -> None:
    """The kopf wiring and the commands are on top; nothing imports them or the run."""
    graph = imports()
    top = {"handlers", "cli", "tokencmd", "login", "refresh", "run"}
    for module, deps in graph.items():
        upward = deps & top - {module}
        allowed = {"cli": top, "handlers": {"refresh"}, "refresh": {"run"}, "__main__": {"cli"}}
        assert upward <= allowed.get(module, set()), f"{module} imports {upward}"
