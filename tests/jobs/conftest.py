"""Fixtures of the jobs layer: one run of `python jobs/demo.py`, shared by the tests that check its console and
network (test_demo.py) and the README's snippets against its outputs (test_readme.py)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmbert.testing import tiny_encoder_dir
from tests.helpers import DEMO, REPO
from tests.helpers.netcheck import run_watching


@dataclass
class DemoRun:
    root: Path  # the folder the demo ran in: its outputs are in root / DEMO
    returncode: int
    console: str
    seen: set  # what its process tree listened on (tests/helpers/netcheck.py)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """`python jobs/demo.py --output runs/demo` as a user runs it (no RAY_ADDRESS, no loopback variable), with a
    tiny encoder and one epoch to keep it short, in a fresh folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["PYTHONPATH"] = str(REPO)
    root = tmp_path_factory.mktemp("demo-run")
    done, seen = run_watching([sys.executable, str(REPO / "jobs" / "demo.py"), "--output", str(root / DEMO),
                               "--encoder", tiny_encoder_dir(), "--epochs", "1"], env, str(REPO), timeout=900)
    return DemoRun(root, done.returncode, done.stdout, seen)
