"""cmbert.query on a small generated scores dataset laid out as jobs/score.py writes it (hive partitions)."""

from __future__ import annotations

import datetime as dt
import os

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmbert import query, storage
from cmbert.scoring import label7, polarity
from schemas import SCORES_SCHEMA

PNG = b"\x89PNG\r\n\x1a\n"


def score_row(uid: str, clip: str, speaker: str | None, score: float, version: str, day: str,
              start: float = 1.0, video: str | None = None) -> dict:
    return {"utterance_id": uid, "clip_id": clip, "source": f"videos/{clip}.mp4",
            "extra": [("video_id", video or f"yt-{clip}"), ("channel", "news")], "speaker": speaker,
            "start": start, "end": start + 2.0, "text": f"text {uid}",
            "score": score, "polarity": polarity(score), "label7": label7(score), "model_id": "cmbert-tiny",
            "model_version": version, "run_id": f"score-{day}",
            "scored_at": dt.datetime.fromisoformat(day).replace(hour=2, tzinfo=dt.timezone.utc), "score_date": day}


def write_scores(root: str, rows: list[dict], schema: pa.Schema = SCORES_SCHEMA) -> None:
    table = storage.conform(pa.Table.from_pylist(rows, schema=schema), schema)
    for (day, version) in sorted({(r["score_date"], r["model_version"]) for r in rows}):
        part = table.filter((pa.compute.field("score_date") == day) & (pa.compute.field("model_version") == version))
        folder = os.path.join(root, storage.partition_segment("score_date", day),
                              storage.partition_segment("model_version", version))
        os.makedirs(folder, exist_ok=True)
        pq.write_table(part.drop_columns(["score_date", "model_version"]), os.path.join(folder, "part-0.parquet"))


@pytest.fixture
def scores_dir(tmp_path) -> str:
    rows = [
        score_row("a1", "clipA", "S0", 2.0, "v1", "2024-05-01"),
        score_row("a2", "clipA", "S1", -1.0, "v1", "2024-05-01", start=4.0),
        score_row("b1", "clipB", "S0", -2.5, "v1", "2024-05-02"),
        score_row("b2", "clipB", None, -0.5, "v1", "2024-05-02", start=5.0),
        score_row("c1", "clipC", "S0", 0.0, "v1", "2024-05-03"),
    ]
    root = str(tmp_path / "scores")
    write_scores(root, rows)
    # an older model version scored some of the same utterances earlier, before scores had source/extra (v1)
    v1 = pa.schema([f for f in SCORES_SCHEMA if f.name not in ("source", "extra")])
    old = [score_row("a1", "clipA", "S0", -3.0, "v0/old", "2024-04-01"),
           score_row("b1", "clipB", "S0", 3.0, "v0/old", "2024-04-01")]
    write_scores(root, [{k: v for k, v in r.items() if k in v1.names} for r in old], v1)
    return root


def test_scan_reads_partitions_and_old_files(scores_dir):
    lf = query.scan_scores(scores_dir)
    assert lf.collect_schema()["score_date"] == pl.Date
    df = lf.collect()
    assert df.height == 7
    assert set(df["model_version"]) == {"v1", "v0/old"}  # '/' survived the percent-encoded folder name
    assert df.filter(pl.col("model_version") == "v0/old")["source"].null_count() == 2  # v1 files: no source
    assert query.latest_version(lf) == "v1"
    versions = query.model_versions(lf).collect()
    assert versions["model_version"].to_list() == ["v1", "v0/old"] and versions["utterances"].to_list() == [5, 2]


def test_per_clip_and_per_speaker_name_the_video(scores_dir):
    mine = query.one_version(query.scan_scores(scores_dir))
    assert query.manifest_keys(mine) == ["channel", "video_id"]
    clips = query.mean_per_clip(mine, ["video_id"]).collect()
    assert clips.columns[:3] == ["source", "video_id", "utterances"]
    assert clips["source"].to_list() == ["videos/clipB.mp4", "videos/clipC.mp4", "videos/clipA.mp4"]
    assert clips["video_id"].to_list() == ["yt-clipB", "yt-clipC", "yt-clipA"]
    assert clips["mean_score"].to_list() == pytest.approx([-1.5, 0.0, 0.5])
    assert clips["share_negative"].to_list() == pytest.approx([1.0, 0.0, 0.5])
    speakers = query.mean_per_speaker(mine).collect()
    assert speakers.height == 5  # (clip, speaker) pairs, a null speaker kept
    assert speakers.row(0, named=True)["source"] == "videos/clipB.mp4" and speakers["mean_score"][0] == pytest.approx(-2.5)
    old = query.mean_per_clip(query.one_version(query.scan_scores(scores_dir), "v0/old")).collect()
    assert old["mean_score"].to_list() == pytest.approx([-3.0, 3.0])


def test_most_negative_trend_distribution(scores_dir):
    lf = query.scan_scores(scores_dir)
    neg = query.most_negative(query.one_version(lf), limit=2, ids=["video_id"]).collect()
    assert neg["utterance_id"].to_list() == ["b1", "a2"]
    assert neg["source"].to_list() == ["videos/clipB.mp4", "videos/clipA.mp4"]
    assert neg["video_id"].to_list() == ["yt-clipB", "yt-clipA"]
    trend = query.daily_trend(lf).collect()
    assert trend["score_date"].to_list() == [dt.date(2024, 4, 1), dt.date(2024, 5, 1), dt.date(2024, 5, 2),
                                             dt.date(2024, 5, 3)]
    assert trend["mean_score"].to_list() == pytest.approx([0.0, 0.5, -1.5, 0.0])
    assert trend["clips"].to_list() == [2, 1, 1, 1]
    dist = query.score_distribution(lf).collect()
    v1 = dist.filter(pl.col("model_version") == "v1").row(0, named=True)
    assert v1["utterances"] == 5
    assert [v1[f"n{k:+d}"] for k in range(-3, 4)] == [0, 1, 1, 2, 0, 1, 0]  # -2.5 -> -2, -0.5 -> 0 (half to even)


def test_cli_prints_and_plots(scores_dir, tmp_path, capsys):
    png = tmp_path / "trend.png"
    assert query.main(["--scores", scores_dir, "--plot", str(png), "clips", "negative"]) == 0
    out = capsys.readouterr().out
    assert "== clips" in out and "== negative" in out and "== trend" not in out
    assert "videos/clipB.mp4" in out and "yt-clipB" in out and "channel" in out
    assert png.read_bytes()[:8] == PNG
    assert query.main(["--scores", scores_dir, "--ids", "video_id", "clips"]) == 0
    assert "channel" not in capsys.readouterr().out
    assert query.main(["--scores", str(tmp_path / "none")]) == 2
    assert "no such dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        query.main(["--scores", scores_dir, "bogus"])


def test_plot_clip_by_source_and_by_id_and_unknown(scores_dir, tmp_path, capsys):
    by_source, by_id = tmp_path / "a.png", tmp_path / "b.png"
    assert query.main(["--scores", scores_dir, "--plot-clip", "videos/clipA.mp4", str(by_source)]) == 0
    out = capsys.readouterr().out
    assert "== " not in out and str(by_source) in out  # the plot alone: no tables
    assert by_source.read_bytes()[:8] == PNG
    assert query.main(["--scores", scores_dir, "--plot-clip", "clipB", str(by_id), "versions"]) == 0
    assert by_id.read_bytes()[:8] == PNG and "== versions" in capsys.readouterr().out
    rows = query.clip_utterances(query.one_version(query.scan_scores(scores_dir)), "clipA")
    assert rows["utterance_id"].to_list() == ["a1", "a2"]  # in time order
    missing = tmp_path / "c.png"
    assert query.main(["--scores", scores_dir, "--plot-clip", "videos/nope.mp4", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no clip 'videos/nope.mp4'" in err and not missing.exists()


def test_plot_clip_of_text_only_rows(tmp_path):
    """Text-only manifest rows have no times: one slot per utterance, in order."""
    rows = pl.DataFrame({"utterance_id": ["t1", "t2"], "clip_id": ["abc"] * 2, "source": ["manifest:3"] * 2,
                         "speaker": [None, None], "start": [None, None], "end": [None, None],
                         "text": ["fine words", "awful words"], "score": [0.5, -1.0], "model_version": ["v"] * 2},
                        schema_overrides={"start": pl.Float64, "end": pl.Float64, "speaker": pl.String})
    png = query.plot_clip(rows, str(tmp_path / "t.png"))
    assert open(png, "rb").read(8) == PNG
