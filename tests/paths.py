"""Where things are in the repository, for every test tier (one place, not one per module)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "oauth-token-operator"
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
README = REPO / "README.md"
PACKAGE = REPO / "operator" / "oauth_token_operator"
