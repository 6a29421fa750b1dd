"""Issue 17: a job's private local Ray listens on 127.0.0.1 only, and its console has no GCS-timeout noise.

Each job runs as a user would run it (`python jobs/X.py`, no RAY_ADDRESS, and without the loopback variable
that the Makefile and conftest export, so the job's own code must bind loopback). While it runs, every TCP
socket its process tree (driver, GCS, raylet, workers, agents, Ray Train and Ray Data actors) listens on is
read from /proc.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from cmbert.testing import tiny_encoder_dir
from tests.helpers import REPO
from tests.helpers.netcheck import CONSOLE_NOISE, run_watching

pytestmark = pytest.mark.slow

CORPUS = REPO / "tests" / "fixtures" / "corpus"
TEXT = "This was a terrible film. The plot made no sense and I wanted my money back."


def user_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["PYTHONPATH"] = str(REPO)
    return env


def run_job(name: str, *args: str, timeout: float = 400):
    done, seen = run_watching([sys.executable, str(REPO / "jobs" / f"{name}.py"), *args], user_env(), str(REPO),
                              timeout)
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout, seen


def assert_private(name: str, console: str, seen) -> None:
    assert any(s.process == "raylet" for s in seen), f"{name}: never saw the job's raylet listening: {sorted(seen)}"
    exposed = sorted(s for s in seen if not s.loopback)
    assert not exposed, f"{name}: listening beyond loopback: {exposed}"
    noisy = [line for line in console.splitlines() if any(n in line for n in CONSOLE_NOISE)]
    assert not noisy, f"{name}: console carries Ray's internals: {noisy[:3]}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loopback")
    clips = root / "clips"
    clips.mkdir()
    shutil.copy(CORPUS / "terrible_film.wav", clips / "terrible_film.wav")
    (clips / "manifest.csv").write_text(f'file,text,label\nterrible_film.wav,"{TEXT}",-2\n')
    return root


@pytest.fixture(scope="module")
def preprocessed(work):
    console, seen = run_job("preprocess", "--input", str(work / "clips"), "--manifest",
                            str(work / "clips" / "manifest.csv"), "--output", str(work / "data"))
    return console, seen


@pytest.fixture(scope="module")
def trained(work, preprocessed):
    utterances = str(work / "data" / "utterances")
    console, seen = run_job("train", "--train", utterances, "--dev", utterances, "--output", str(work / "ckpt"),
                            "--encoder", tiny_encoder_dir(), "--epochs", "1", "--seeds", "1", "--workers", "2")
    return console, seen


def test_preprocess_listens_on_loopback_only(preprocessed):
    assert_private("preprocess", *preprocessed)


def test_train_listens_on_loopback_only(trained):
    assert_private("train", *trained)


def test_score_listens_on_loopback_only(work, trained):
    console, seen = run_job("score", "--checkpoint", str(work / "ckpt"), "--input", str(work / "data" / "utterances"),
                            "--output", str(work / "scored"))
    assert_private("score", console, seen)
