"""Logging setup. Libraries that could log request or response bodies are held at INFO
whatever the operator's level, so no secret reaches a log line even at debug.

kopf's per-object lines carry the object in the record's `k8s_ref`; both formats keep it
(text: a `[namespace/name]` prefix, JSON: an `object` field, the key kopf's own JSON
formatter uses). kopf's formatters live in a private module (`kopf._core`), so the JSON side
is python-json-logger, the library kopf's formatter is built on. Timestamps are UTC."""

from __future__ import annotations

import copy
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_QUIET = ("httpx", "httpcore", "kubernetes_asyncio", "aiohttp", "urllib3", "hpack")
# Extras kopf attaches to its object loggers; `settings` is not serialisable.
_KOPF_EXTRAS = ("k8s_ref", "k8s_skip", "settings")


def _object_of(record: logging.LogRecord) -> dict[str, Any] | None:
    ref = getattr(record, "k8s_ref", None)
    return ref if isinstance(ref, dict) else None


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def formatMessage(self, record: logging.LogRecord) -> str:
        ref = _object_of(record)
        if ref is not None:
            where = "/".join(part for part in (ref.get("namespace"), ref.get("name")) if part)
            record = copy.copy(record)  # other handlers see the message unprefixed
            record.message = f"[{where}] {record.message}"
        return super().formatMessage(record)


class JsonLineFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            reserved_attrs=[*RESERVED_ATTRS, *_KOPF_EXTRAS],
        )

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_record["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_record, record, message_dict)
        log_record["level"] = record.levelname.lower()
        ref = _object_of(record)
        if ref is not None:
            log_record["object"] = {key: value for key, value in ref.items() if value}


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    # kopf logs every handled event at INFO: one line per Secret change cluster-wide.
    if root.level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
