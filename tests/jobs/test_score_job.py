"""jobs/score.py end to end on a tiny real checkpoint: local dirs and S3; incremental, exactly-once, refusals."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cmbert import storage
from cmbert.testing import SCORE_DATE, make_checkpoint, scoring_rows, write_utterances
from jobs import score as score_job
from schemas import RUNS_SCHEMA, SCORES_SCHEMA

pytestmark = pytest.mark.slow

NEXT_DATE = (dt.date.fromisoformat(SCORE_DATE) + dt.timedelta(days=1)).isoformat()  # a later night's run


def run_score(ckpt: str, data: str, out: str, *extra: str) -> int:
    return score_job.main(["--checkpoint", ckpt, "--input", data, "--output", out, "--actors", "1",
                           "--batch-size", "8", "--sort-window", "2", "--score-date", SCORE_DATE, *extra])


def read_scores(out: str) -> pa.Table:
    return storage.read_table(f"{out}/scores", SCORES_SCHEMA)


def read_runs(out: str) -> list[dict]:
    return sorted(storage.read_table(f"{out}/runs", RUNS_SCHEMA).to_pylist(), key=lambda r: r["started_at"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, dict]:
    """Audio reaches its score ([CLS] gets the mean word audio), and its meta does not allow zero audio."""
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    return path, make_checkpoint(path, cls_audio="mean")


def test_local_exactly_once_and_incremental(ray_local, checkpoint, tmp_path, monkeypatch, capsys):
    ckpt, meta = checkpoint
    data, out = f"{tmp_path}/data/utterances", f"{tmp_path}/out"
    first = scoring_rows(20, no_audio=2)
    write_utterances(data, first[:12])
    write_utterances(data, first[12:])

    # a run that dies before publishing publishes nothing and records a failed run
    def die(*args, **kwargs):
        raise storage.StorageError("simulated crash before publish")

    monkeypatch.setattr(score_job.incremental.Publisher, "commit", die)
    assert run_score(ckpt, data, out) == 2
    monkeypatch.undo()
    assert not storage.dataset_exists(f"{out}/scores")
    assert [r["status"] for r in read_runs(out)] == ["failed"]
    assert not list(Path(out).parent.glob("_staging/*")) and not list(Path(out).glob("_staging/*"))

    # the next run completes it: one row per utterance, in the declared schema and partition; the two
    # audio-absent rows are not scored by this checkpoint (it needs audio) and are counted as rejected
    assert run_score(ckpt, data, out) == 0
    printed = capsys.readouterr().out
    assert "scored 18/18" in printed and "rejected 2" in printed and "audio absent" in printed
    assert f"{out}/scores" in printed
    scores = read_scores(out)
    assert scores.num_rows == 18
    first = first[:18]
    assert sorted(scores.column("utterance_id").to_pylist()) == sorted(r["utterance_id"] for r in first)
    files = list(Path(out, "scores").rglob("*.parquet"))
    assert files and all(f.parent.name == f"model_version={meta.model_version}" for f in files)
    assert all(f.parent.parent.name == f"score_date={SCORE_DATE}" for f in files)
    s = np.array(scores.column("score").to_pylist())
    assert np.all((s >= -3) & (s <= 3))
    assert scores.column("label7").to_pylist() == [int(np.round(x)) for x in s]
    assert scores.column("polarity").to_pylist() == ["positive" if x >= 0 else "negative" for x in s]
    assert set(scores.column("model_version").to_pylist()) == {meta.model_version}
    assert set(scores.column("model_id").to_pylist()) == {"cmbert-tiny"}
    by_id = {r["utterance_id"]: r for r in scores.to_pylist()}
    for row in first:  # the row-to-score association survived length bucketing
        got = by_id[row["utterance_id"]]
        assert (got["text"], got["clip_id"], got["start"]) == (row["text"], row["clip_id"], row["start"])

    # a rerun adds nothing (and starts no Ray work)
    assert run_score(ckpt, data, out) == 0
    assert read_scores(out).num_rows == 18

    # the next day, new utterances (and a re-published old one): only the new ones are scored, under that day's
    # date (what the nightly chain relies on: what an earlier night scored is skipped whatever its date)
    more = scoring_rows(6, start=20)
    write_utterances(data, more + first[:1])
    assert run_score(ckpt, data, out, "--score-date", NEXT_DATE) == 0
    scores = read_scores(out)
    assert scores.num_rows == 24
    assert len(set(scores.column("utterance_id").to_pylist())) == 24
    by_date = {}
    for uid, day in zip(scores.column("utterance_id").to_pylist(), scores.column("score_date").to_pylist()):
        by_date.setdefault(day, set()).add(uid)
    assert by_date == {SCORE_DATE: {r["utterance_id"] for r in first}, NEXT_DATE: {r["utterance_id"] for r in more}}
    runs = read_runs(out)
    assert [r["status"] for r in runs] == ["failed", "succeeded", "succeeded", "succeeded"]
    assert [(r["n_input"], r["n_output"], r["n_skipped"], r["n_rejected"]) for r in runs[1:]] == [
        (20, 18, 0, 2), (20, 0, 18, 2), (26, 6, 18, 2)]
    assert all(r["model_version"] == meta.model_version and r["job"] == "score" for r in runs)
    config = json.loads(runs[-1]["config_json"])
    assert config["checkpoint"] == ckpt and config["batch_size"] == 8
    # the same scores from the same weights: the checkpoint's model version is the exactly-once key
    again = {r["utterance_id"]: r["score"] for r in scores.to_pylist()}
    assert again[first[0]["utterance_id"]] == pytest.approx(by_id[first[0]["utterance_id"]]["score"])


def test_feature_set_mismatch_is_refused_before_any_work(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    data, out = f"{tmp_path}/utterances", f"{tmp_path}/out"
    rows = scoring_rows(3)
    for r in rows:
        r["feature_set"] = "compare_2016_lld"
    write_utterances(data, rows)
    assert run_score(ckpt, data, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "egemaps_v02_lld/25" in err and "compare_2016_lld/25" in err
    assert not Path(out).exists()


def test_missing_inputs_are_one_line_errors(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    assert run_score(str(tmp_path / "nope"), str(tmp_path), str(tmp_path / "o")) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert run_score(ckpt, str(tmp_path / "nothing"), str(tmp_path / "o")) == 2
    assert "no such dataset" in capsys.readouterr().err
    assert run_score(ckpt, str(tmp_path), str(tmp_path / "o"), "--score-date", "yesterday") == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_s3_checkpoint_input_and_output(ray_local, s3_env, tmp_path):
    """All on S3; the paper's CM-BERT (audio cannot reach [CLS]) also scores the audio-absent row."""
    bucket = s3_env
    ckpt, data, out = f"s3://{bucket}/models/tiny", f"s3://{bucket}/data/utterances", f"s3://{bucket}/out"
    make_checkpoint(ckpt, cls_audio="zero")
    write_utterances(data, scoring_rows(10, no_audio=1))
    assert run_score(ckpt, data, out) == 0
    assert read_scores(out).num_rows == 10
    assert run_score(ckpt, data, out) == 0
    scores = read_scores(out)
    assert scores.num_rows == 10
    assert pc.count_distinct(scores.column("utterance_id")).as_py() == 10
    assert [r["n_output"] for r in read_runs(out)] == [10, 0]
    # the Polars queries read the same output straight from S3
    from cmbert import query

    clips = query.run(query.QueryConfig(scores=f"{out}/scores"), ["clips", "trend"])
    assert clips["clips"]["utterances"].sum() == 10
    assert clips["trend"]["score_date"].to_list() == [dt.date.fromisoformat(SCORE_DATE)]
