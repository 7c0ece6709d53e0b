"""The operator's settings from OAUTH_TOKEN_OPERATOR_* variables: a bad value stops the
start with a message that names the variable, never a traceback."""

from __future__ import annotations

import pytest

from oauth_token_operator.app.handlers import in_cluster_server
from oauth_token_operator.cli.main import build_parser, explain
from oauth_token_operator.kube.errors import KubeError
from oauth_token_operator.kube.transport import read_json


def test_environment_sets_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_METRICS_PORT", "9191")
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_DRAIN_TIMEOUT", "40s")
    args = build_parser().parse_args(["run"])
    assert (args.metrics_port, args.drain_timeout) == (9191, 40.0)
    assert build_parser().parse_args(["run", "--metrics-port", "0"]).metrics_port == 0


def bad_start(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The error argparse prints when the command is parsed; it must exit 2."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_a_service_link_variable_is_explained(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a real node revealed: kubelet's service links turn a Service named
    oauth-token-operator-metrics into OAUTH_TOKEN_OPERATOR_METRICS_PORT=tcp://..."""
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_METRICS_PORT", "tcp://10.0.0.146:41543")
    message = bad_start(capsys, "run")
    assert "'tcp://10.0.0.146:41543' is not valid (from OAUTH_TOKEN_OPERATOR_METRICS_PORT)" in (
        message
    )
    assert "Service named oauth-token-operator-metrics" in message
    assert "enableServiceLinks: false" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEALTH_PORT", "70000"),
        ("CONCURRENCY", "many"),
        ("CONCURRENCY", "0"),  # nothing would ever run
        ("PROPAGATION_MARGIN", "soon"),
        ("LOG_LEVEL", "verbose"),
    ],
)
def test_a_bad_value_names_its_variable_when_the_command_runs_not_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(f"OAUTH_TOKEN_OPERATOR_{name}", value)
    with pytest.raises(SystemExit) as helped:
        build_parser().parse_args(["--help"])
    assert helped.value.code == 0
    message = bad_start(capsys, "run")
    assert f"{value!r} is not valid (from OAUTH_TOKEN_OPERATOR_{name})" in message
    assert "Service" not in message


def test_concurrency_zero_on_the_command_line_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "'0' is not valid: 0 is less than 1" in bad_start(capsys, "run", "--concurrency", "0")


def test_the_operator_logs_at_info_and_the_commands_at_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """argparse shares a parent parser's Actions between subcommands: the commands' quieter
    default must not leak into `run`."""
    parser = build_parser()
    assert parser.parse_args(["run"]).log_level == "info"
    assert parser.parse_args(["token", "api"]).log_level == "warning"
    monkeypatch.setenv("OAUTH_TOKEN_OPERATOR_LOG_LEVEL", "DEBUG")
    assert build_parser().parse_args(["run"]).log_level == "debug"


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


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.reason, self._body = status, "Not Found", body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass


@pytest.mark.parametrize(
    ("body", "kind_missing"),
    [
        (b'{"kind":"Status","message":"oauthclients \\"api\\" not found"}', False),
        (b"404 page not found\n", True),  # what the API server says for an unserved path
    ],
)
async def test_a_missing_crd_is_told_apart_from_a_missing_object(
    body: bytes, kind_missing: bool
) -> None:
    async def call() -> _Response:
        return _Response(404, body)

    with pytest.raises(KubeError) as raised:
        await read_json(call())
    assert raised.value.kind_missing is kind_missing
    message = explain(raised.value)
    assert message is not None
    assert ("install the CRD" in message) is kind_missing
