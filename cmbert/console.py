"""What a job's console shows: its own progress and results, and real warnings and errors, not the chatter of
Ray and the libraries under it.

Nothing is lost: every line dropped here is also in Ray's log files (the session's ``logs/`` folder: worker-*.out
and .err, ray-data/, python-core-driver-*.log), which the job names when Ray starts. The filter sits on the job
process's own stdout and stderr (file descriptors 1 and 2), so it sees Ray's C++ lines and the worker lines Ray
forwards to the driver alike. ``keep`` is the whole rule.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import struct
import sys
import termios
import threading
import time

# Lines that say nothing a user can act on, each with why it is harmless for these jobs.
BENIGN = (
    # Ray Data hands each actor its context and UDF as object refs, by design; Ray warns about every such actor
    # (and Ray Train's internal PreemptionWatcher). Our actors hold no state that a restart would lose.
    "has constructor arguments in the object store",
    # Ray 2.60 turns token auth on and says so at every start (README, Security).
    "Token authentication is enabled for this Ray cluster",
    # We disable Ray Data's progress bars on purpose: the jobs print their own progress.
    "Progress bars disabled",
    # Ray Train asks the autoscaler for resources; on a fixed local cluster a slow answer is retried.
    "Failed to send resource request",
    # Ray Data's own deprecation notice about an option it sets itself.
    "ExecutionOptions.exclude_resources",
)
# A line Ray forwards from a worker or actor: "(Name pid=123) text", maybe with colour codes and "[repeated]".
WORKER_LINE = re.compile(r"^(\x1b\[[0-9;]*m)*\((?P<who>[^)]*?pid=\d+[^)]*)\)(\x1b\[[0-9;]*m)*\s?(?P<text>.*)$")
# Ray's own INFO-level log lines: "2026-12-01 21:01:05,275\tINFO streaming_executor.py:215 -- ...".
RAY_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|DEBUG)\s")
# What a worker line must look like to reach the console: a warning or an error of any logger, or glog's E/W/F.
WORKER_ALERT = re.compile(r"\b(WARNING|ERROR|CRITICAL|FATAL|Warning|Error|Exception|warning|error)\b"
                          r"|^\[\S+ \S+ [EWF] \d+ \d+\]")
# A traceback's body from a worker: the exception reaches the driver anyway, traceback included.
TRACEBACK_BODY = re.compile(r"^(\s|Traceback \(most recent call last\)|\^+$)")


def keep(line: str) -> bool:
    """Whether one console line (without its newline) is shown."""
    if any(marker in line for marker in BENIGN):
        return False
    worker = WORKER_LINE.match(line)
    if worker:
        text = worker.group("text")
        return bool(WORKER_ALERT.search(text)) and not TRACEBACK_BODY.match(text)
    # progress bars of libraries (tqdm, "Loading weights: 37/37"): a job reports its own progress
    if "it/s]" in line or "s/it]" in line:
        return False
    return not RAY_INFO.match(line)


_installed = False


def quiet_console() -> None:
    """Filter this process's stdout and stderr through ``keep`` until it exits (a job's ``__main__`` calls it)."""
    global _installed
    if _installed:
        return
    _installed = True
    threads = [_filter_fd(fd) for fd in (1, 2)]

    @atexit.register
    def _drain() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for restore, drained in threads:
            restore()
            drained()


def _filter_fd(fd: int):
    target = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if keep(line.decode("utf-8", "replace")))
            if out:
                os.write(target, out)
        if pending and keep(pending.decode("utf-8", "replace")):
            os.write(target, pending)

    thread = threading.Thread(target=pump, name=f"console-filter-{fd}", daemon=True)
    thread.start()

    def restore() -> None:
        os.dup2(target, fd)  # drops this process's last reference to the pipe's write end

    def drained(timeout: float = 2.0) -> None:
        # Ray's child processes may still hold the pipe open, so EOF may never come: wait for the pipe to empty.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _unread(read_end):
            time.sleep(0.01)
        thread.join(timeout=0.1)

    return restore, drained


def _unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
