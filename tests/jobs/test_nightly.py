"""The nightly chain as a user runs it: cluster/nightly.sh against a local Ray head (cluster/ray-local.sh), two
nights in a row with new clips of the demo corpus landing before each (one of them broken), the first night killed
between its two steps and the next night completing it. Tiny CM-BERT checkpoint; real jobs, real models.

Night 1 (`run`, as the RayJob runs it, joining the cluster): clips A, B, C and a broken file -> preprocess takes
A, B, C and rejects the broken file; the night is killed (SIGKILL to its process group) as the scoring step
starts: no scores that night. Then E lands. Night 2 (`submit`, as the VM crontab runs it): preprocess takes E
only (the rest is done, the broken file's reject is not retried); scoring scores A, B, C and E (night 1's work and
its own), each once. (That scoring skips what an earlier night scored, under another score date, is
tests/jobs/test_score_job.py's.)
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from cmbert import storage
from cmbert.raysetup import free_ports
from schemas import REJECTS_SCHEMA, RUNS_SCHEMA, SCORES_SCHEMA, UTTERANCES_SCHEMA
from cmbert.testing import make_checkpoint
from tests.helpers import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "cluster" / "nightly.sh"
LOCAL_RAY = REPO / "cluster" / "ray-local.sh"
CORPUS = REPO / "tests" / "fixtures" / "corpus"
NIGHTS = ("2024-06-01", "2024-06-02")
# The demo corpus's shortest clips with transcripts (forced alignment: no ASR model to load).
A, B, C, E = "loved_it.mp4", "terrible_film.wav", "bellanova.flac", "battery.ogg"
BROKEN = "broken.wav"


def transcripts() -> dict[str, str]:
    with open(CORPUS / "manifest.csv", newline="") as f:
        return {r["file"]: r["text"] for r in csv.DictReader(f)}


def land(inbox: Path, manifest: Path, files: list[str]) -> None:
    """New videos arrive: the files under the input prefix and their rows in the manifest (with a video id)."""
    text = transcripts()
    new = not manifest.exists()
    with open(manifest, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["file", "text", "video_id"])
        for name in files:
            if name == BROKEN:
                (inbox / name).write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt this is not audio at all")
            else:
                shutil.copy(CORPUS / name, inbox / name)
            w.writerow([name, text.get(name, "a clip that cannot be decoded"), f"vid-{Path(name).stem}"])


def head_env(ray_dir: str) -> dict[str, str]:
    names = ["RAY_PORT", "DASHBOARD_PORT", "DASHBOARD_AGENT_PORT", "DASHBOARD_AGENT_GRPC_PORT", "RAY_CLIENT_PORT",
             "METRICS_PORT", "RUNTIME_ENV_AGENT_PORT", "NODE_MANAGER_PORT", "OBJECT_MANAGER_PORT"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMBERT_") and k != "RAY_ADDRESS"}
    env.update({name: str(port) for name, port in zip(names, free_ports(len(names)))})
    env.update({"NUM_CPUS": "2", "RAY_LOCAL_DIR": ray_dir, "START_TIMEOUT": "150", "RAY_AUTH_MODE": "token",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"})
    return env


def night(env: dict, mode: str, date: str, kill_at: str | None = None) -> tuple[int, str]:
    """One night: ``nightly.sh MODE`` with this night's score date; SIGKILL its process group at ``kill_at``."""
    proc = subprocess.Popen(["bash", str(SCRIPT), mode], env=env | {"CMBERT_SCORE_DATE": date}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    t0 = time.monotonic()
    deadline = t0 + 400
    for line in proc.stdout:
        lines.append(line)
        if kill_at and line.startswith(kill_at):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("night did not finish in 400 s:\n" + "".join(lines[-40:]))
    proc.wait(timeout=60)
    print(f"night {date} ({mode}): {time.monotonic() - t0:.0f} s")  # shown with pytest -s
    return proc.returncode, "".join(lines)


def scores_by_date(out: str) -> dict[str, set[str]]:
    table = storage.read_table(f"{out}/scores", SCORES_SCHEMA, columns=["utterance_id", "score_date"])
    got: dict[str, set[str]] = {}
    for uid, day in zip(table.column("utterance_id").to_pylist(), table.column("score_date").to_pylist()):
        got.setdefault(day, set()).add(uid)
    return got


def utterances_of(data: str, sources: set[str]) -> set[str]:
    table = storage.read_table(f"{data}/utterances", UTTERANCES_SCHEMA, columns=["utterance_id", "source"])
    return {u for u, s in zip(table.column("utterance_id").to_pylist(), table.column("source").to_pylist())
            if s in sources}


def test_two_nights_new_clips_a_broken_one_and_a_killed_night(tmp_path):
    ray_dir = tempfile.mkdtemp(prefix="cnl-", dir="/tmp")  # Ray's socket paths must stay short
    inbox, data, out, ckpt = tmp_path / "videos", str(tmp_path / "corpus"), str(tmp_path / "scored"), str(tmp_path / "ckpt")
    inbox.mkdir()
    manifest = inbox / "manifest.csv"
    make_checkpoint(ckpt, cls_audio="mean")  # egemaps_v02_lld / 25, as --features egemaps writes
    settings = tmp_path / "nightly.env"
    settings.write_text("\n".join([
        f"CMBERT_INPUT={inbox}", f"CMBERT_MANIFEST={manifest}", f"CMBERT_DATA={data}", f"CMBERT_CHECKPOINT={ckpt}",
        f"CMBERT_OUTPUT={out}", "CMBERT_PREPROCESS_OPTIONS=--features egemaps --diarizer none --actors 1",
        "CMBERT_SCORE_OPTIONS=--batch-size 8 --actors 1", "CMBERT_SCORE_DATE=", ""]))
    env = head_env(ray_dir)
    try:
        started = subprocess.run(["bash", str(LOCAL_RAY), "start"], env=env, cwd=REPO, capture_output=True,
                                 text=True, timeout=200)
        assert started.returncode == 0, started.stdout + started.stderr
        cluster = env | {"CMBERT_ENV_FILE": str(settings)}

        # A, B, C and a broken file land; night 1 (as the RayJob runs it, joining the cluster) dies as scoring starts
        land(inbox, manifest, [A, B, C, BROKEN])
        gcs = {"RAY_ADDRESS": f"127.0.0.1:{env['RAY_PORT']}"}
        code, log = night(cluster | gcs, "run", NIGHTS[0], kill_at="[nightly] score:")
        assert code == -signal.SIGKILL and "[nightly] preprocess done" in log, log[-3000:]
        night1 = utterances_of(data, {A, B, C})
        assert night1 and scores_by_date(out) == {}  # the killed night published no scores
        rejects = storage.read_table(f"{data}/rejects", REJECTS_SCHEMA).to_pylist()
        assert [(r["source"], r["stage"]) for r in rejects] == [(BROKEN, "decode")], rejects

        # E lands; night 2, as the crontab runs it (ray job submit of the whole chain to the head's job API),
        # preprocesses E only and scores A, B, C and E: the killed night's utterances plus its own
        land(inbox, manifest, [E])
        code, log = night(cluster | {"RAY_ADDRESS": f"http://127.0.0.1:{env['DASHBOARD_PORT']}"}, "submit", NIGHTS[1])
        assert code == 0 and "succeeded" in log, log[-3000:]
        assert "[nightly] preprocess done" in log and "[nightly] score done" in log, log[-3000:]
        night2 = utterances_of(data, {E})
        assert night2 and scores_by_date(out) == {NIGHTS[1]: night1 | night2}
    finally:
        stopped = subprocess.run(["bash", str(LOCAL_RAY), "stop"], env=env, cwd=REPO, capture_output=True,
                                 text=True, timeout=120)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    # exactly once end to end: every utterance scored once, each score names its video
    scores = storage.read_table(f"{out}/scores", SCORES_SCHEMA)
    assert scores.num_rows == len(night1 | night2) == pc.count_distinct(scores["utterance_id"]).as_py()
    assert storage.read_table(f"{data}/utterances", UTTERANCES_SCHEMA).num_rows == scores.num_rows
    by_source = {}
    for r in scores.to_pylist():
        by_source.setdefault(r["source"], set()).add(dict(r["extra"])["video_id"])
    assert by_source == {s: {f"vid-{Path(s).stem}"} for s in (A, B, C, E)}
    runs = sorted(storage.read_table(f"{data}/runs", RUNS_SCHEMA).to_pylist(), key=lambda r: r["started_at"])
    assert [(r["n_input"], r["n_skipped"], r["n_rejected"]) for r in runs] == [(4, 0, 1), (5, 4, 0)]
