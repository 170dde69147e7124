"""Log output for the worker command: plain text or one JSON object per line, both timestamped.

Job lines carry ``queue``, ``job_id``, ``job_type``, ``tag``, ``worker_id`` and ``attempt`` as
``extra`` fields; the JSON format writes every such field, the text format appends them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FIELDS = ("queue", "job_id", "job_type", "tag", "worker_id", "attempt")
"""The structured fields the library puts on its log records."""
TEXT_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"ts": ISO 8601 UTC, "level", "logger", "message", <fields>, "exc_info"}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if (value := record.__dict__.get(name)) is not None:
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(log_format: str = "text", level: str = "info") -> None:
    """Set up the root logger for a process of its own (the worker command)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
