"""The log's two forms: text as it always was, and JSON with one whole object per line."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from bastion.observability import logs
from bastion.observability.logs import JsonFormatter, request_fields

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _record(
    message: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    level: int = logging.WARNING,
    exc_info: logging._SysExcInfoType | None = None,
    **extra: str,
) -> logging.LogRecord:
    record = logging.LogRecord("bastion.test", level, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_time_level_logger_and_message() -> None:
    record = _record()
    record.created, record.msecs = 1_700_000_000.0421, 42.1
    line = JsonFormatter().format(record)
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.042Z",
        "level": "warning",
        "logger": "bastion.test",
        "message": "hello world",
    }


def test_a_json_line_carries_the_request_ids_given_in_extra() -> None:
    line = json.loads(JsonFormatter().format(_record(**request_fields("r-1", "theirs"))))
    assert (line["request_id"], line["caller_request_id"]) == ("r-1", "theirs")
    assert "caller_request_id" not in request_fields("r-2")  # absent, not null


def test_other_extra_attributes_are_not_written() -> None:
    """uvicorn passes ``color_message``; nothing beyond the named fields reaches the line."""
    line = json.loads(JsonFormatter().format(_record(color_message="\x1b[36m", secret="x")))
    assert set(line) == {"time", "level", "logger", "message"}


def test_an_exception_is_one_string_field_and_the_line_stays_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = _record("it failed", (), logging.ERROR, exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["exception"].startswith("Traceback (most recent call last):\n")
    assert parsed["exception"].endswith("ValueError: bad\nthing")


def test_a_message_that_cannot_be_formatted_still_gives_a_line() -> None:
    line = json.loads(JsonFormatter().format(_record("%d items", ("many",))))
    assert line["message"] == "%d items (unformattable log arguments)"


def test_every_timestamp_is_utc_with_milliseconds() -> None:
    for created in (0.0, 1_700_000_000.999, 1_800_000_000.5):
        record = _record()
        record.created = created
        record.msecs = (created - int(created)) * 1000
        assert TIME.match(json.loads(JsonFormatter().format(record))["time"])


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure() replaces the root handlers; put the test run's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_the_text_form_is_unchanged() -> None:
    stream = io.StringIO()
    logs.configure("info", "text", stream)
    logging.getLogger("bastion").warning("upstream %s failed", "a", extra=request_fields("r-9"))
    logging.getLogger("bastion").debug("not shown at info")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING bastion: upstream a failed\n",
        stream.getvalue(),
    )


HOOKS = textwrap.dedent(
    """
    import logging, sys, threading, warnings
    from bastion.observability import logs

    logs.configure("info", "json")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
    warnings.warn("something is deprecated", DeprecationWarning, stacklevel=1)
    thread = threading.Thread(target=lambda: 1 / 0, name="worker")
    thread.start()
    thread.join()

    class Broken:
        def __del__(self):
            raise RuntimeError("in a finalizer")

    Broken()
    raise KeyError("at the top")
    """
)


def test_under_json_warnings_and_uncaught_exceptions_are_json_lines_too() -> None:
    """A real process: nothing it writes to standard error is anything but a JSON line."""
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", HOOKS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1  # an uncaught exception still ends the process with 1
    lines = [json.loads(line) for line in done.stderr.split("\n") if line]
    for line in lines:
        assert TIME.match(line["time"]) and line["level"] and line["logger"], line
    found = {line["logger"]: line for line in lines}
    assert found["uvicorn.error"]["message"] == "Started server process [1]"
    assert "DeprecationWarning: something is deprecated" in found["py.warnings"]["message"]
    messages = [(line["level"], line["message"]) for line in lines if line["logger"] == "bastion"]
    assert messages == [
        ("error", "uncaught exception in thread worker"),
        ("error", messages[1][1]),
        ("critical", "uncaught exception: KeyError"),
    ]
    assert "Broken" in messages[1][1]
    exceptions = [line["exception"] for line in lines if "exception" in line]
    assert [e.rsplit("\n", 1)[-1] for e in exceptions] == [
        "ZeroDivisionError: division by zero",
        "RuntimeError: in a finalizer",
        "KeyError: 'at the top'",
    ]
