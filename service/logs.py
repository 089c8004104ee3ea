"""Log lines of the API and the worker, in one format: a JSON object per line (for a log
shipper) or plain text, as BLOCKPRUNE_LOG_FORMAT says, each carrying the request or job it
belongs to.

That context (`request_id` in the API, `job_id` and `item_id` in a worker's task) lives in a
contextvar, so a line logged anywhere below a request or a task carries it without the id
being passed down: Starlette copies the context into the threadpool that runs sync routes, and
a lease's heartbeat thread starts with a copy (worker.leases).
"""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Literal

LogFormat = Literal["json", "text"]

# Never mutated: every change sets a new dict, so a reset restores the enclosing context.
_context: ContextVar[dict[str, str] | None] = ContextVar("blockprune_log_context", default=None)

# A LogRecord's own attributes. Whatever else a record has came through `extra=` and is logged
# as fields of its own; uvicorn's ANSI-coloured copy of the message is not worth a field.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def _merged(fields: dict[str, object]) -> dict[str, str]:
    added = {name: str(value) for name, value in fields.items() if value is not None}
    return {**(_context.get() or {}), **added}


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Every line logged inside carries `fields` (None values left out) on top of the
    enclosing context; the context is restored on the way out."""
    token = _context.set(_merged(fields))
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: object) -> None:
    """Add `fields` until the enclosing `log_context` ends: for an id learnt once the task is
    under way (a work item's job)."""
    _context.set(_merged(fields))


def current_context() -> dict[str, str]:
    return dict(_context.get() or {})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context,
    any `extra=` fields, and the traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **current_context(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_") and value is not None:
                line.setdefault(name, value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold (a UUID, a path) is still written.
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value...`, the context after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        context = "".join(f" {name}={value}" for name, value in current_context().items())
        return super().formatMessage(record) + context


def logging_config(log_format: LogFormat, level: int | str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig`: one handler on stderr in `log_format` for the root
    logger, and uvicorn's loggers sent to it (they keep handlers of their own otherwise).
    `blockprune api` hands it to uvicorn, which applies it in each of its processes."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"blockprune": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "blockprune",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(log_format: LogFormat, level: int | str = "INFO") -> None:
    logging.config.dictConfig(logging_config(log_format, level))
    logging.captureWarnings(True)  # a library's warning is a line in the format too
