"""The README's snippets work as pasted after `make demo`: every Python block and every shell command that touches
the demo's outputs runs, unchanged, in the folder `python jobs/demo.py` ran in (runs/demo/...: the real jobs on
the demo corpus, with a tiny encoder and one epoch; the run test_demo.py checks)."""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
from pathlib import Path

import polars as pl
import pytest

from cmbert import query
from tests.helpers import CORPUS, DEMO, REPO

pytestmark = pytest.mark.slow

README = REPO / "README.md"
CLIPS = ("two_speakers.wav", "terrible_film.wav")  # two of the demo's clips: the README plots the first


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def demo_commands() -> list[str]:
    """Shell lines of the README that read or write the demo's outputs (comments stripped)."""
    lines = [ln.split("  #")[0].strip() for b in blocks("bash") for ln in b.splitlines()]
    return [ln for ln in lines if DEMO in ln and not ln.startswith("#")]


@pytest.fixture(scope="module")
def demo_dir(demo_run) -> Path:
    """The folder `python jobs/demo.py` ran in (tests/jobs/conftest.py: the real jobs on the demo corpus, a tiny
    encoder), with runs/demo/data, checkpoint and scored as `make demo` leaves them, and .venv as in the repo."""
    assert demo_run.returncode == 0, demo_run.console[-4000:]
    root = demo_run.root
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def test_readme_snippets_name_no_model_version():
    """A hard-coded model version (a 16-hex id) prints an empty table for everyone else's demo."""
    code = "\n".join(blocks("python") + demo_commands())
    assert not re.findall(r"\b[0-9a-f]{16}\b", code)
    assert blocks("python") and len(demo_commands()) >= 3


def test_readme_python_snippets_run_as_pasted(demo_dir, capsys, monkeypatch):
    monkeypatch.chdir(demo_dir)
    for snippet in blocks("python"):
        exec(compile(snippet, "README.md", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    for name in CLIPS:  # the per-clip tables name the demo's videos, and they are not empty
        assert name in out
    assert "shape: (0" not in out


def test_readme_demo_commands_run_as_pasted(demo_dir):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for line in demo_commands():
        argv = shlex.split(line)
        assert argv[0] == ".venv/bin/python", line  # the demo's interpreter, as `make demo` built it
        done = subprocess.run(argv, cwd=demo_dir, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        assert "query: error" not in done.stderr
        for i, a in enumerate(argv):
            if a in ("--plot", "--plot-clip"):
                png = demo_dir / argv[i + (2 if a == "--plot-clip" else 1)]
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", line
    scores = query.scan_scores(str(demo_dir / DEMO / "scored" / "scores")).collect()
    with open(CORPUS / "manifest.csv", newline="") as f:
        demo_clips = {row["file"] for row in csv.DictReader(f)}  # the demo corpus: every clip is scored
    assert set(scores["source"]) == demo_clips and scores.height > 0
    assert scores.select(pl.col("model_version").n_unique()).item() == 1
