"""Log output for the worker command: plain text or one JSON object per line, both timestamped.

Job lines carry ``queue``, ``job_id``, ``job_type``, ``tag``, ``worker_id`` and ``attempt`` as
``extra`` fields; the JSON format writes every such field, the text format appends them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

FIELDS = ("queue", "job_id", "job_type", "tag", "worker_id", "attempt", "job_ids")
"""The structured fields the library puts on its log records."""
TEXT_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


class QueueLog(logging.LoggerAdapter[logging.Logger]):
    """A logger of one queue: every record carries ``queue``, merged with the call's own
    ``extra`` (the standard adapter replaces it before Python 3.13)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def queue_log(logger: logging.Logger, queue: str) -> QueueLog:
    return QueueLog(logger, {"queue": queue})


NAMED_IDS = 10
"""Job ids a recovery line names; the scripts return as many (NAMED_IDS in lua/_shared.lua)."""


def named_ids(ids: list[str], total: int) -> str:
    """The job ids a recovery names (the scripts return the first few) and how many it did."""
    more = total - len(ids)
    return ", ".join(ids) + (f" and {more} more" if more > 0 else "")


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
