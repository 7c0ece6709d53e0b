"""The operator's settings from OAUTH_TOKEN_OPERATOR_* variables: a bad value stops the
start with a message that names the variable, never a traceback."""

from __future__ import annotations

import pytest

from oauth_token_operator.cli import build_parser
from oauth_token_operator.handlers import in_cluster_server


def test_environment_sets_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_METRICS_PORT", "9191")
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_DRAIN_TIMEOUT", "40s")
    args = build_parser().parse_args(["run"])
    assert (args.metrics_port, args.drain_timeout) == (9191, 40.0)
    assert build_parser().parse_args(["run", "--metrics-port", "0"]).metrics_port == 0


def test_a_service_link_variable_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a real node revealed: kubelet's service links turn a Service named
    oauth-token-operator-metrics into OAUTH_TOKEN_OPERATOR_METRICS_PORT=tcp://..."""
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_METRICS_PORT", "tcp://10.0.0.146:41543")
    with pytest.raises(SystemExit) as exited:
        build_parser()
    message = str(exited.value.code)
    assert "OAUTH_TOKEN_OPERATOR_METRICS_PORT='tcp://10.0.0.146:41543' is not valid" in message
    assert "Service named oauth-token-operator-metrics" in message
    assert "enableServiceLinks: false" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("HEALTH_PORT", "70000"), ("CONCURRENCY", "many"), ("PROPAGATION_MARGIN", "soon")],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"OAUTH_TOKEN_OPERATOR_{name}", value)
    with pytest.raises(SystemExit) as exited:
        build_parser()
    assert f"OAUTH_TOKEN_OPERATOR_{name}={value!r} is not valid" in str(exited.value.code)
    assert "Service" not in str(exited.value.code)


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        (
            {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            "https://10.0.0.1:443",
        ),
        (
            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
            "https://[fd00::1]:6443",
        ),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None),
        ({}, None),
    ],
)
def test_in_cluster_server_is_the_address_kubelet_gives(
    environ: dict[str, str], server: str | None
) -> None:
    """Not kopf's https://kubernetes.default.svc, which needs cluster DNS (a real node
    showed hostNetwork pods without it)."""
    assert in_cluster_server(environ) == server
