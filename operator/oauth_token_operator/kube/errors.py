"""What a failed Kubernetes API call is, for every layer above the client: no I/O library,
so that the modules that only handle API failures load no Kubernetes client (as kopf keeps
clients/errors.py apart)."""

from __future__ import annotations


class KubeError(Exception):
    """An API call failed. Carries the status code and the API's short reason, never a body
    that might echo Secret data."""

    def __init__(self, status: int, message: str, kind_missing: bool = False) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        # A 404 for the URL itself, not for an object: the API (a CRD) is not installed.
        self.kind_missing = kind_missing

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def unreachable(self) -> bool:
        """No answer at all: refused, reset, timed out, TLS failed, a body cut off."""
        return self.status == UNREACHABLE


# KubeError.status when the API server gave no HTTP answer.
UNREACHABLE = 0
