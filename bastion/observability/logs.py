"""The process's log on standard error: text lines, or one JSON object per line.

Everything that reaches standard error goes through :mod:`logging` and one handler, so the
format is the same for Bastion's own messages, uvicorn's, the managed engine's relayed
output and Python's warnings. With ``logging.format: json`` the uncaught exceptions of the
main thread and of other threads, and the errors Python would print as "Exception ignored
in ...", are logged too instead of being printed as tracebacks.

A JSON line carries ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and
``message``; ``request_id`` and ``caller_request_id`` where the request path logs one (it
passes them with ``extra=request_fields(ctx)``, costing nothing on a request that logs
nothing); ``exception`` (the traceback, as one string) where there is one. No other
attribute of a record is written, so nothing reaches the log that the message itself
did not say.

The access log is not written here (:mod:`bastion.observability.access_log` formats its
lines in batches); it shares the stream and, under ``json``, the one-object-per-line form.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any, Literal, TextIO

import orjson

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure", "request_fields"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The text form: ``2025-01-31 12:00:00,123 WARNING bastion: ...``."""

_REQUEST_FIELDS = ("request_id", "caller_request_id")

log = logging.getLogger("bastion")


def request_fields(request_id: str, caller_request_id: str | None = None) -> dict[str, str]:
    """The ``extra`` of a record about one request: the fields a JSON line carries for it."""
    if caller_request_id:
        return {"request_id": request_id, "caller_request_id": caller_request_id}
    return {"request_id": request_id}


class JsonFormatter(logging.Formatter):
    """One record as one line of JSON (no newline inside: a traceback becomes a string)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not cost the line (or print a traceback)
            message = f"{record.msg} (unformattable log arguments)"
        line: dict[str, Any] = {
            "time": _timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for name in _REQUEST_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line).decode()


def _timestamp(created: float, msecs: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(msecs):03d}Z"


def configure(level: str, format: Literal["text", "json"], stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (standard error) in
    ``format``, replacing any handler there was; under ``json``, route warnings, uncaught
    exceptions and unraisable errors through the log as well."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread
        sys.unraisablehook = _unraisable


def _uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    log.critical("uncaught exception: %s", kind.__name__, exc_info=(kind, error, traceback))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # as Python's own hook: a thread may end this way
        return
    log.error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread is not None else "?",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    kind = unraisable.exc_type
    log.error(
        "%s: %r",
        unraisable.err_msg or "Exception ignored in",
        unraisable.object,
        exc_info=(kind, unraisable.exc_value or kind(), unraisable.exc_traceback),
    )
