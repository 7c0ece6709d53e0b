"""Pure wire formats shared by the modules that build and read Kubernetes objects: base64
Secret data and RFC 3339 times. No Kubernetes client import, so pure modules can use them."""

from __future__ import annotations

import base64
import datetime
import time
from typing import Any


def decode_data(secret: dict[str, Any] | None) -> dict[str, str]:
    """A Secret's data as text; keys whose values are not UTF-8 are left out."""
    out: dict[str, str] = {}
    for key, value in ((secret or {}).get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def encode_data(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def parse_rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
