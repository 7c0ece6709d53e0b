"""Every reason the operator writes is documented where users look for it: README's
"Reasons" table, one row each."""

from __future__ import annotations

import re

from oauth_token_operator import reasons
from tests.paths import README


def test_every_reason_has_a_row_in_the_readme() -> None:
    text = README.read_text()
    section = text[text.index("## Reasons") : text.index("## Large clusters")]
    rows = re.findall(r"^\| `([A-Za-z]+)` \|", section, re.M)
    written = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    assert sorted(written - set(rows)) == []  # undocumented reasons
    assert sorted(set(rows) - written) == []  # documented reasons the operator never writes
    assert len(rows) == len(set(rows))
