"""The pure scoring logic: labels from scores, bucketing, planning, compatibility (no Ray, no I/O)."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import torch

from cmbert.collate import length_buckets
from cmbert.model import PAPER, CMBertConfig
from cmbert.checkpoint import CheckpointMeta
from cmbert.errors import FeatureMismatch
from cmbert.scoring import (ModelAudio, Scorer, ScoreStamp, check_compatible, clip_score, keep_rows, label7, plan_work,
                            polarity, score_records, score_rows, without_audio)
from schemas import SCORE_RESULT_SCHEMA, SCORES_SCHEMA


@pytest.mark.parametrize(
    "score, clipped, pol, lab",
    [(0.0, 0.0, "positive", 0), (-0.0001, -0.0001, "negative", 0), (0.49, 0.49, "positive", 0),
     (0.5, 0.5, "positive", 0), (1.5, 1.5, "positive", 2), (2.5, 2.5, "positive", 2), (-2.6, -2.6, "negative", -3),
     (7.0, 3.0, "positive", 3), (-9.0, -3.0, "negative", -3), (3.0, 3.0, "positive", 3)],
)
def test_labels_from_score(score, clipped, pol, lab):
    assert clip_score(score) == pytest.approx(clipped)
    assert polarity(clip_score(score)) == pol
    assert label7(score) == lab
    assert -3 <= label7(score) <= 3


def audio_of(meta: dict, config) -> ModelAudio:
    return ModelAudio.from_meta(CheckpointMeta.from_dict(meta), config)


def test_length_buckets_cover_every_row_once_and_group_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=103)
    buckets = length_buckets(lengths, 10)
    flat = np.concatenate(buckets)
    assert sorted(flat.tolist()) == list(range(103))
    assert [len(b) for b in buckets] == [10] * 10 + [3]
    maxima = [lengths[b].max() for b in buckets]
    assert maxima == sorted(maxima)
    # sorted bucketing pads less than arrival order
    padded_sorted = sum(len(b) * lengths[b].max() for b in buckets)
    padded_arrival = sum(len(lengths[i:i + 10]) * lengths[i:i + 10].max() for i in range(0, 103, 10))
    assert padded_sorted < padded_arrival
    with pytest.raises(ValueError):
        length_buckets([1, 2], 0)


class EchoModel(torch.nn.Module):
    """Scores a row by its first token id, so a mix-up of rows and scores shows."""

    def forward(self, input_ids, attention_mask, audio):
        class Out:
            score = input_ids[:, 0].float() / 10.0

        return Out()


def echo_collate(rows, tokenizer, max_len, audio_dim):
    if any(r["text"] == "BOOM" for r in rows):
        raise ValueError("bad row")
    n = max(len(r["text"]) for r in rows)
    ids = torch.tensor([[int(r["utterance_id"])] + [0] * (n - 1) for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "audio": torch.zeros(len(rows), n, audio_dim),
            "labels": torch.zeros(len(rows))}


def test_score_rows_keeps_row_score_association_and_isolates_a_bad_row():
    rows = [{"utterance_id": str(i), "text": "x" * ((i * 7) % 13 + 1)} for i in range(40)]
    rows[17]["text"] = "BOOM"
    scorer = Scorer(EchoModel(), None, 64, 3, echo_collate, batch_size=4)
    scores, errors = score_rows(rows, scorer, lengths=[len(r["text"]) for r in rows])
    for i, (s, e) in enumerate(zip(scores, errors)):
        if i == 17:
            assert np.isnan(s) and "bad row" in e
        else:
            assert e is None and s == pytest.approx(i / 10.0)


def test_score_records_fit_the_schema():
    rows = [{"utterance_id": "u1", "clip_id": "c", "source": "videos/a.mp4", "extra": [("video_id", "yt-1")],
             "speaker": "A", "start": 0.0, "end": 1.0, "text": "hi"},
            {"utterance_id": "u2", "clip_id": "c", "source": "videos/a.mp4", "extra": [], "speaker": None,
             "start": None, "end": None, "text": "no"}]
    stamp = ScoreStamp("cmbert-minilm", "v1", "score-1", "2024-05-01")
    now = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    recs = score_records(rows, [4.2, float("nan")], [None, "broken"], stamp, now)
    table = pa.Table.from_pylist(recs, schema=SCORE_RESULT_SCHEMA)
    ok = table.filter(table.column("error").is_null()).drop_columns(["error"])
    from cmbert.storage import conform

    ok = conform(ok, SCORES_SCHEMA)
    assert ok.to_pylist()[0] | {"scored_at": None} == {
        "utterance_id": "u1", "clip_id": "c", "source": "videos/a.mp4", "extra": [("video_id", "yt-1")], "speaker": "A", "start": 0.0, "end": 1.0, "text": "hi", "score": 3.0,
        "polarity": "positive", "label7": 3, "model_id": "cmbert-minilm", "model_version": "v1", "run_id": "score-1",
        "scored_at": None, "score_date": "2024-05-01"}
    assert recs[1]["score"] is None and recs[1]["error"] == "broken"


AUDIO = ModelAudio("egemaps_v02_lld", 25)


def test_check_compatible():
    check_compatible(AUDIO, [("egemaps_v02_lld", 25), ("none", 0)])
    with pytest.raises(FeatureMismatch, match="egemaps_v02_lld/25.*compare_2016_lld/65"):
        check_compatible(AUDIO, [("compare_2016_lld", 65)])
    with pytest.raises(FeatureMismatch):
        check_compatible(AUDIO, [("egemaps_v02_lld", 24)])
    check_compatible(ModelAudio("none", 0), [("compare_2016_lld", 65)])  # text-only accepts anything
    text_only = audio_of({"feature_set": "egemaps_v02_lld", "feature_dim": 25}, CMBertConfig(fusion="none"))
    assert text_only.text_only
    assert without_audio({"text": "hi", "words": [{"word": "hi", "features": [1.0]}]})["words"][0]["features"] is None


def test_which_checkpoints_score_audio_absent_rows():
    meta = {"feature_set": "egemaps_v02_lld", "feature_dim": 25}
    assert audio_of(meta, CMBertConfig(**PAPER)).missing_audio == "zeros"  # paper: audio cannot reach [CLS]
    assert audio_of(meta, CMBertConfig(cls_audio="mean")).missing_audio == "refuse"
    assert audio_of(meta, CMBertConfig(**PAPER, audio_kernel=3)).missing_audio == "refuse"
    assert audio_of(meta | {"missing_audio": "zeros"}, CMBertConfig(cls_audio="mean")).missing_audio == "zeros"
    assert audio_of({"feature_set": "none", "feature_dim": 0}, CMBertConfig(cls_audio="mean")).text_only


def test_plan_work_skips_done_dedups_and_marks_partial_files():
    ids = ["a", "b", "c", "d", "a", "e", "f"]
    files = ["f1", "f1", "f2", "f2", "f3", "f3", "f3"]
    present = [True, True, True, False, True, True, True]
    sets = ["egemaps_v02_lld", "egemaps_v02_lld", "egemaps_v02_lld", "none"] + ["egemaps_v02_lld"] * 3
    plan = plan_work(ids, files, present, sets, done={"c"}, model=AUDIO)
    assert plan.n_input == 6 and plan.n_skipped == 1 and plan.n_unscorable == 1 and plan.n_todo == 4
    assert plan.files == ["f1", "f3"]  # f2 has nothing left to score
    assert plan.partial == {"f3": frozenset({"e", "f"})}  # its "a" is taken from f1
    assert keep_rows(["f1", "f1", "f3", "f3", "f3"], ["a", "b", "a", "e", "f"], plan.partial) == [0, 1, 3, 4]
    zeros = plan_work(ids, files, present, sets, done={"c"}, model=ModelAudio("egemaps_v02_lld", 25, "zeros"))
    assert zeros.n_todo == 5 and zeros.n_unscorable == 0
    assert plan_work(ids, files, present, sets, done=set(ids), model=AUDIO).files == []
