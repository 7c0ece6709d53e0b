"""Shared fixtures. The control plane is started once per session: startup costs seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver (no controller-manager), admin kubeconfig included."""
    with ControlPlane() as cp:
        yield cp
