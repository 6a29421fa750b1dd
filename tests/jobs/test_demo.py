"""`python jobs/demo.py` as a user runs it (a tiny encoder keeps it short): it finishes, its outputs exist, its
console shows the jobs' own progress and none of Ray's or the libraries' internals, and its private Ray stays on
loopback the whole time."""

from __future__ import annotations

import os
import sys

import pytest

from cmbert.testing import tiny_encoder_dir
from tests.helpers import REPO
from tests.helpers.netcheck import CONSOLE_NOISE, run_watching

pytestmark = pytest.mark.slow


def test_demo_console_shows_the_jobs_and_nothing_of_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "demo"
    done, seen = run_watching([sys.executable, str(REPO / "jobs" / "demo.py"), "--output", str(out),
                               "--encoder", tiny_encoder_dir(), "--epochs", "1"], env, str(REPO), timeout=900)
    console = done.stdout
    assert done.returncode == 0, console[-4000:]
    noisy = [line for line in console.splitlines() if any(n in line for n in CONSOLE_NOISE)]
    assert not noisy, f"the demo's console carries Ray's internals: {noisy[:5]}"
    for step in ("=== preprocess", "=== train", "=== evaluate", "=== score", "=== query", "=== demo outputs",
                 "[preprocess] clips"):
        assert step in console, f"{step!r} missing from the demo's console:\n{console[-3000:]}"
    assert (out / "trend.png").is_file() and (out / "metrics.json").is_file()
    exposed = sorted(s for s in seen if not s.loopback)
    assert any(s.process == "raylet" for s in seen) and not exposed, exposed
