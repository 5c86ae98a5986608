"""Logging: plain lines for people, JSON lines on request, both carrying request and session ids."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

__all__ = ["REQUEST_ID", "SESSION_ID", "configure_logging"]

#: set by the RPC interceptor for the duration of each call
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
SESSION_ID: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.session_id = SESSION_ID.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "session_id"):
            value = getattr(record, key, "")
            if value:
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{key}={value}"
            for key in ("request_id", "session_id")
            if (value := getattr(record, key, ""))
        )
        return f"{line} [{ids}]" if ids else line


def configure_logging(level: str, json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        _JsonFormatter()
        if json_lines
        else _TextFormatter("%(asctime)s modeld[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
