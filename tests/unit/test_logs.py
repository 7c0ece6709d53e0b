"""Log lines keep which object they are about, and say when in UTC, in both formats."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import cast

import kopf
import pytest

from oauth_token_operator.app.logs import configure_logging

BODY = {
    "apiVersion": "oauth.example.com/v1alpha1",
    "kind": "OAuthClient",
    "metadata": {"name": "api", "namespace": "team-a", "uid": "u-1"},
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("kopf.objects").level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("kopf.objects").setLevel(saved[2])


def _kopf_object_warning() -> None:
    # kopf's own per-object logger, as its handlers use it.
    body = kopf.Body(cast(kopf.RawBody, BODY))
    logger = kopf.ObjectLogger(body=body, settings=kopf.OperatorSettings())
    logger.warning("Handler 'on_spec' failed temporarily")


def test_text_lines_name_the_object_and_say_utc(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "text")
    _kopf_object_warning()
    line = capsys.readouterr().err.strip()
    assert "[team-a/api] Handler 'on_spec' failed temporarily" in line
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING kopf\.objects: ", line)


def test_json_lines_carry_the_object_and_a_zoned_timestamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    _kopf_object_warning()
    logging.getLogger("oauth_token_operator.engine.run").info("plain")
    kopf_line, plain_line = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert kopf_line["object"] == {
        "apiVersion": "oauth.example.com/v1alpha1",
        "kind": "OAuthClient",
        "name": "api",
        "namespace": "team-a",
        "uid": "u-1",
    }
    assert kopf_line["message"] == "Handler 'on_spec' failed temporarily"
    assert kopf_line["level"] == "warning"
    assert kopf_line["time"].endswith("+00:00")
    assert "settings" not in kopf_line
    assert "object" not in plain_line
    assert plain_line["logger"] == "oauth_token_operator.engine.run"


def test_json_exceptions_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = capsys.readouterr().err.splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]
