"""How crosssell processes write their logs: ``text`` for people, ``json`` for shippers.

``--log-format json`` (or ``CROSSSELL_LOG_FORMAT=json`` for the Celery worker) writes
one JSON object per line, through python-json-logger::

    {"timestamp": "2026-11-29T19:04:05.123000+00:00", "level": "INFO",
     "logger": "worker.outbox.delivery", "message": "send 42 sent", "send_id": 42,
     "campaign": "laptop-accessories", "outcome": "sent"}

Besides ``timestamp``, ``level``, ``logger`` and ``message`` (plus ``exc_info`` for an
exception), only the fields in :data:`FIELDS` are written: ids, campaign, outcome and
reason, passed by the code as ``extra=fields(...)``. Anything else a library attaches
to a record is dropped, so a structured field can never carry an address or a name
that the message itself (redacted by :mod:`worker.core.redaction`) does not.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The structured fields a log line may carry: identifiers and codes, never personal data.
FIELDS = ("event_id", "send_id", "campaign", "customer_id", "outcome", "reason")
_BASE = ("timestamp", "level", "logger", "message", "exc_info", "stack_info")


def fields(
    *,
    event_id: str | None = None,
    send_id: int | None = None,
    campaign: str | None = None,
    customer_id: str | None = None,
    outcome: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log call: the given structured fields, ``None`` ones left out."""
    given = {
        "event_id": event_id,
        "send_id": send_id,
        "campaign": campaign,
        "customer_id": customer_id,
        "outcome": outcome,
        "reason": reason,
    }
    return {name: value for name, value in given.items() if value is not None}


class CrosssellJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, limited to the base keys and :data:`FIELDS`."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        allowed = {*_BASE, *FIELDS}
        return {key: value for key, value in log_record.items() if key in allowed}


def formatter(log_format: LogFormat) -> logging.Formatter:
    return CrosssellJsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: LogFormat, stream: Any = None) -> None:
    """One handler on the root logger, to stderr (or ``stream``), in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_crosssell", False):
            root.removeHandler(old)
    handler._crosssell = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
