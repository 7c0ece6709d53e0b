"""A refresh token that could not be written to its Secret, kept for the person at the
terminal: the provider may already have invalidated the previous one, so this may be the
only token that still works. It goes to a private file, never to the terminal or a log."""

from __future__ import annotations

import os
from pathlib import Path


def keep_refresh_token(namespace: str, secret: str, key: str, refresh_token: str) -> str:
    """Writes the token to ./oauth-token-operator-NS-SECRET.refresh-token (mode 0600) and
    returns what to tell the user: where it is and how to store it."""
    path = Path(f"oauth-token-operator-{namespace}-{secret}.refresh-token").resolve()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(refresh_token)
    return (
        f"the refresh token is in {path} (mode 0600). Store it before anything refreshes "
        f"again:\n  kubectl -n {namespace} patch secret {secret} --type merge "
        f'-p "{{\\"data\\":{{\\"{key}\\":\\"$(base64 -w0 {path})\\"}}}}"'
    )
