"""jobs/score.py end to end on a tiny real checkpoint: local dirs and S3; incremental, exactly-once, refusals."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cmbert import storage
from schemas import RUNS_SCHEMA, SCORES_SCHEMA, UTTERANCES_SCHEMA

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FEATURES = "egemaps_v02_lld"
DIM = 25
WORDS = "the movie was great but the ending felt awful and slow honestly fine".split()
SCORE_DATE = "2024-05-01"


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


score_job = load_job("score")


def make_checkpoint(uri: str, feature_set: str = FEATURES, feature_dim: int = DIM, **config) -> dict:
    """A tiny CM-BERT (2 layers, hidden 32) with the bundled MiniLM tokenizer, saved with the real API."""
    import torch
    from transformers import BertConfig

    from cmbert.checkpoint import CheckpointMeta, save_checkpoint
    from cmbert.model import PAPER, CMBertConfig, build_model, load_tokenizer

    torch.manual_seed(0)
    encoder = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64).to_dict()
    cfg = CMBertConfig(encoder="minilm", encoder_config=encoder, audio_dim=max(feature_dim, 1), max_len=32,
                       **(PAPER | config))  # the paper's model unless the test says otherwise
    model = build_model(cfg)
    meta = CheckpointMeta(feature_set=feature_set, feature_dim=feature_dim, model_id="cmbert-tiny", seed=0)
    return save_checkpoint(model, load_tokenizer(cfg), cfg, uri, meta)


def utterance_rows(n: int, start: int = 0, no_audio: int = 0, seed: int = 0) -> list[dict]:
    """``n`` utterances of clip ids clip-0..2; the last ``no_audio`` of them are text-only rows."""
    rng = np.random.default_rng(seed + start)
    now = dt.datetime(2024, 4, 30, tzinfo=dt.timezone.utc)
    rows = []
    for i in range(start, start + n):
        absent = i >= start + n - no_audio
        k = int(rng.integers(2, 12))
        words = [WORDS[int(j)] for j in rng.integers(0, len(WORDS), size=k)]
        t0 = float(i)
        rows.append({
            "utterance_id": f"clip-{i % 3}-{i * 1000:09d}", "task_id": f"clip-{i % 3}", "clip_id": f"clip-{i % 3}",
            "source": f"clip-{i % 3}.wav", "speaker": None if absent else f"SPEAKER_{i % 2:02d}",
            "start": None if absent else t0, "end": None if absent else t0 + 0.3 * k, "text": " ".join(words),
            "label": None,
            "words": [{"word": w, "start": None if absent else t0 + 0.3 * j, "end": None if absent else t0 + 0.3 * j + 0.25,
                       "speaker": None, "features": None if absent else rng.normal(size=DIM).astype(np.float32).tolist()}
                      for j, w in enumerate(words)],
            "words_source": "text" if absent else "align", "audio_present": not absent,
            "feature_set": "none" if absent else FEATURES, "feature_dim": 0 if absent else DIM,
            "extra": [], "run_id": "preprocess-test", "created_at": now,
        })
    return rows


def write_utterances(uri: str, rows: list[dict]) -> None:
    storage.write_table(pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA), uri, UTTERANCES_SCHEMA)


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
    first = utterance_rows(20, no_audio=2)
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

    # new utterances (and a re-published old one): only the new ones are scored
    more = utterance_rows(6, start=20)
    write_utterances(data, more + first[:1])
    assert run_score(ckpt, data, out) == 0
    scores = read_scores(out)
    assert scores.num_rows == 24
    assert len(set(scores.column("utterance_id").to_pylist())) == 24
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
    rows = utterance_rows(3)
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
    write_utterances(data, utterance_rows(10, no_audio=1))
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
