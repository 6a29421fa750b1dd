"""TEST-ONLY fault injection: kill the current worker process once, at a named point, to prove retries work.

Inert unless the environment variable ``CMBERT_TEST_KILL`` is set; nothing in the project sets it outside
tests (tests/reliability/test_faults.py). Its value is ``SITE:AFTER:MARKER``:

- ``SITE``: where to die: ``preprocess`` (``ClipStage``, after a task's rows are computed and before they are
  returned) or ``score`` (``ScoreStage``, after a batch is scored and before it is returned);
- ``AFTER``: how many calls at that site this process completes first (0: die on the first);
- ``MARKER``: a file path. The process that dies creates it first (exclusively), so exactly one process dies
  once in a whole run: the actor Ray restarts, and the task it retries, find the marker and carry on.

The process is killed with SIGKILL (no cleanup, no exception): what the OOM killer or a lost node does.
"""

from __future__ import annotations

import os
import signal

ENV = "CMBERT_TEST_KILL"
_calls: dict[str, int] = {}


def kill_point(site: str) -> None:
    """Die here (once per run, see the module doc) when ``CMBERT_TEST_KILL`` names this site."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, after, marker = spec.split(":", 2)
    if want != site:
        return
    n = _calls.get(site, 0)
    _calls[site] = n + 1
    if n < int(after):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # already died once in this run
    os.write(fd, f"{site} pid {os.getpid()} after {n} calls\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def worker_env() -> dict[str, str]:
    """``{CMBERT_TEST_KILL: ...}`` when set in the driver (for a Ray runtime_env's env_vars), else ``{}``."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}
