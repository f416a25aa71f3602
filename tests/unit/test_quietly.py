"""scripts/lib/quietly, which runs scripts/setup's long pip steps: what is happening and the time
spent on screen, the command's output in a log shown only when it fails, its exit status kept.

Run for real (bash, processes, signals) on stand-in commands that are slow or fail.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUIETLY = ROOT / "scripts" / "lib" / "quietly"
STARTED = re.compile(r"; started \d\d:\d\d:\d\d$")


def quietly(
    log: Path, *command: str, expect: str = "about 2 s", tick: str = "0.5"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUIETLY), "--log", str(log), "--title", "building the thing", "--expect", expect,
         "--", *command],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "QUIETLY_TICK": tick},
    )  # fmt: skip


def test_a_slow_command_shows_what_it_is_and_the_time_spent_not_its_output(
    tmp_path: Path,
) -> None:
    log = tmp_path / "logs" / "thing.log"
    done = quietly(log, "bash", "-c", "echo NOISY-WARNING; sleep 2.2; echo more noise")
    assert done.returncode == 0
    first, *progress, last = done.stdout.splitlines()
    assert first.startswith("building the thing: about 2 s; started ") and STARTED.search(first)
    assert len(progress) >= 3  # a line every half second while it ran
    assert all(re.fullmatch(r"  \.\.\. \d+s elapsed", line) for line in progress), progress
    assert re.fullmatch(r"  done in [23]s", last)  # and nothing after it: the ticker is gone
    assert "NOISY" not in done.stdout + done.stderr
    assert log.read_text() == "NOISY-WARNING\nmore noise\n"


def test_a_failing_command_shows_its_output_and_log_path_and_keeps_its_status(
    tmp_path: Path,
) -> None:
    log = tmp_path / "fail.log"
    script = "for i in $(seq 1 100); do echo line $i; done; echo 'error: compiler exploded'; exit 7"
    done = quietly(log, "bash", "-c", script)
    assert done.returncode == 7
    assert "done in" not in done.stdout
    shown = done.stderr.splitlines()
    assert shown[0].startswith("  FAILED after ") and "(exit status 7)" in shown[0]
    assert "101 lines in all" in shown[1]
    assert shown[-2] == "  | error: compiler exploded"
    assert "  | line 42" in shown and "  | line 41" not in shown  # the last 60 lines
    assert shown[-1] == f"  the whole output: {log}"
    assert log.read_text().count("\n") == 101


def test_under_set_e_a_failed_step_stops_the_setup(tmp_path: Path) -> None:
    """scripts/setup runs with ``set -euo pipefail``: the step's failure must end it."""
    caller = (
        f"set -euo pipefail; {QUIETLY} --log {tmp_path}/x.log --title step -- false; echo AFTER"
    )
    done = subprocess.run(["bash", "-c", caller], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "AFTER" not in done.stdout
    assert "FAILED" in done.stderr


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    for arguments in (["--log", str(tmp_path / "x.log"), "--", "true"], ["--title", "t", "--"]):
        done = subprocess.run([str(QUIETLY), *arguments], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.startswith("usage: ")


def test_on_a_terminal_the_time_is_one_line_redrawn(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(QUIETLY), "--log", str(tmp_path / "t.log"), "--title", "compiling", "--",
         "sleep", "2.5"],
        stdout=terminal,
        stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 1024)
        except OSError:  # the terminal's other end closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(10) == 0
    text = output.decode()
    assert re.search(r"started \d\d:\d\d:\d\d\r\n\r  [12]s elapsed \r  [23]s elapsed ", text), text
    assert re.search(r" elapsed \r\x1b\[K  done in [23]s\r\n$", text), repr(text)  # line cleared


def test_an_interrupt_stops_the_command_and_the_progress_lines(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole foreground group: nothing of the step is left running."""
    process = subprocess.Popen(
        [str(QUIETLY), "--log", str(tmp_path / "i.log"), "--title", "long", "--", "sleep", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "QUIETLY_TICK": "5"},
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith(b"long; started ")
    time.sleep(0.3)  # the command and the ticker are running
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(10) != 0
    process.stdout.close()
    deadline = time.monotonic() + 5
    while True:  # every process of the group ends (the ticker's sleep too)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a process of the step outlived the interrupt"
        time.sleep(0.05)
