"""`python jobs/demo.py` as a user runs it (a tiny encoder keeps it short): it finishes, its outputs exist, its
console shows the jobs' own progress and none of Ray's or the libraries' internals, and its private Ray stays on
loopback the whole time."""

from __future__ import annotations

import pytest

from tests.helpers import DEMO
from tests.helpers.netcheck import CONSOLE_NOISE

pytestmark = pytest.mark.slow


def test_demo_console_shows_the_jobs_and_nothing_of_ray(demo_run):
    console, seen = demo_run.console, demo_run.seen
    out = demo_run.root / DEMO
    assert demo_run.returncode == 0, console[-4000:]
    noisy = [line for line in console.splitlines() if any(n in line for n in CONSOLE_NOISE)]
    assert not noisy, f"the demo's console carries Ray's internals: {noisy[:5]}"
    for step in ("=== preprocess", "=== train", "=== evaluate", "=== score", "=== query", "=== demo outputs",
                 "[preprocess] clips"):
        assert step in console, f"{step!r} missing from the demo's console:\n{console[-3000:]}"
    assert (out / "trend.png").is_file() and (out / "metrics.json").is_file()
    exposed = sorted(s for s in seen if not s.loopback)
    assert any(s.process == "raylet" for s in seen) and not exposed, exposed
