"""End to end on a real local Ray head: cluster/ray-local.sh start, `ray job submit` jobs/preprocess.py and then
jobs/train.py (2 DDP workers) on its output, stop.

The head runs on free (non-default) ports so it cannot collide with a cluster the user already runs.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from cmbert.testing import tiny_encoder_dir
from cmbert.raysetup import free_ports
from tests.helpers import REPO
from tests.helpers.netcheck import Watch

SCRIPT = REPO / "cluster" / "ray-local.sh"
RAY = REPO / ".venv" / "bin" / "ray"
MANIFEST = "tests/fixtures/text_manifest.tsv"  # relative: the job runs inside the uploaded working dir
# The upload honours .gitignore (.venv/, runs/, caches); .git is not ignored by it, so leave it out here.
RUNTIME_ENV = '{"excludes": [".git"]}'


def _head_env(ray_dir: str) -> dict[str, str]:
    names = ["RAY_PORT", "DASHBOARD_PORT", "DASHBOARD_AGENT_PORT", "DASHBOARD_AGENT_GRPC_PORT", "RAY_CLIENT_PORT",
             "METRICS_PORT", "RUNTIME_ENV_AGENT_PORT", "NODE_MANAGER_PORT", "OBJECT_MANAGER_PORT"]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({name: str(port) for name, port in zip(names, free_ports(len(names)))})
    env.update({"NUM_CPUS": "2", "RAY_LOCAL_DIR": ray_dir, "START_TIMEOUT": "150", "RAY_AUTH_MODE": "token",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    return env


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_submit_preprocess_to_local_head():
    # Ray's socket paths must stay under ~107 characters: a short folder in /tmp, not pytest's tmp_path.
    ray_dir = tempfile.mkdtemp(prefix="crl-", dir="/tmp")
    out = Path(tempfile.mkdtemp(prefix="cmbert-submit-")) / "out"
    env = _head_env(ray_dir)
    try:
        started = _run(["bash", str(SCRIPT), "start"], env, timeout=200)
        assert started.returncode == 0, started.stdout + started.stderr
        status = _run(["bash", str(SCRIPT), "status"], env, timeout=60)
        assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr
        watch = Watch(int((Path(ray_dir) / "head.pid").read_text())).start()  # head, workers, job drivers

        job_id = f"cmbert-test-{uuid.uuid4().hex[:8]}"
        submit = _run(
            [str(RAY), "job", "submit", "--address", f"http://127.0.0.1:{env['DASHBOARD_PORT']}",
             "--submission-id", job_id, "--working-dir", str(REPO), "--runtime-env-json", RUNTIME_ENV,
             "--", "python", "jobs/preprocess.py", "--manifest", MANIFEST, "--output", str(out)],
            env, timeout=400,
        )
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-4000:]
        assert f"Job '{job_id}' succeeded" in log, log[-4000:]

        with open(REPO / MANIFEST, newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f, delimiter="\t")]
        files = sorted((out / "utterances").rglob("*.parquet"))
        assert files, f"no Parquet under {out / 'utterances'}"
        table = pads.dataset([str(p) for p in files], format="parquet").to_table()
        assert table.num_rows == len(texts)
        assert sorted(table.column("text").to_pylist()) == sorted(texts)
        assert set(table.column("words_source").to_pylist()) == {"text"}

        # Train on what preprocess wrote: Ray Train DDP with 2 workers, submitted the same way.
        ckpt = out.parent / "ckpt"
        train_id = f"cmbert-train-{uuid.uuid4().hex[:8]}"
        train = _run(
            [str(RAY), "job", "submit", "--address", f"http://127.0.0.1:{env['DASHBOARD_PORT']}",
             "--submission-id", train_id, "--working-dir", str(REPO), "--runtime-env-json", RUNTIME_ENV,
             "--", "python", "jobs/train.py", "--train", str(out / "utterances"), "--dev", str(out / "utterances"),
             "--output", str(ckpt), "--encoder", tiny_encoder_dir(), "--epochs", "1", "--seeds", "1",
             "--workers", "2", "--batch-size", "4"],
            env, timeout=400,
        )
        log = train.stdout + train.stderr
        assert train.returncode == 0 and f"Job '{train_id}' succeeded" in log, log[-4000:]
        assert (ckpt / "meta.json").is_file() and (ckpt / "seed-1" / "model.safetensors").is_file()
        seen = watch.stop()
        assert any(s.process == "raylet" for s in seen), sorted(seen)
        exposed = sorted(s for s in seen if not s.loopback)
        assert not exposed, f"cluster/ray-local.sh's head listens beyond loopback: {exposed}"
    finally:
        stopped = _run(["bash", str(SCRIPT), "stop"], env, timeout=120)
        after = _run(["bash", str(SCRIPT), "status"], env, timeout=60)
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(out.parent, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert after.returncode == 3 and "not running" in after.stdout
