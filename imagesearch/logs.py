"""Structured one-line logs: ``ts level logger event k=v ... request_id=...``."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _fmt(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"{ts}.{int(record.msecs):03d}Z",
            record.levelname.lower(),
            record.name,
            f"event={_fmt(record.getMessage())}",
        ]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts += [f"{k}={_fmt(v)}" for k, v in fields.items()]
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid != "-":
            parts.append(f"request_id={rid}")
        line = " ".join(parts)
        if record.exc_info:
            line += " exc=" + _fmt(self.formatException(record.exc_info))
        return line


def configure(level: str = "INFO") -> None:
    """Sends every log line to stderr in key=value form (call once, in __main__)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Logs one event with key=value fields."""
    logger.log(level, name, extra={"fields": fields})
