"""jobs/preprocess.py end to end on real audio with real models, in-process Ray: outputs, rejects, reruns, S3."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from cmbert import storage
from schemas import REJECTS_SCHEMA, UTTERANCES_SCHEMA

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "fixtures" / "corpus"
sys.path.insert(0, str(REPO / "jobs"))
import preprocess  # noqa: E402

pytestmark = pytest.mark.slow

GOOD = {
    "terrible_film.wav": "This was a terrible film. The plot made no sense and I wanted my money back.",
    "two_speakers.wav": "The new phone is fantastic. Really? I found it slow and frustrating. The screen is beautiful though.",
}


def silence_wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(16000 * seconds), dtype=np.float32), 16000, format="WAV")
    return buf.getvalue()


def make_input(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in GOOD:
        shutil.copy(CORPUS / name, root / name)
    mp4 = (CORPUS / "loved_it.mp4").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(mp4[: len(mp4) // 3])
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (root / "silence.wav").write_bytes(silence_wav(5.0))
    rows = [{"file": n, "text": t, "label": "-2"} for n, t in GOOD.items()]
    rows += [{"file": n, "text": "", "label": ""} for n in ("empty.mp4", "truncated.mp4", "random.mp4", "silence.wav")]
    rows += [
        {"file": "missing.wav", "text": "hello", "label": "1"},
        {"file": "../outside.wav", "text": "hello", "label": "1"},
        {"file": "terrible_film.wav", "text": GOOD["terrible_film.wav"], "label": "-2"},  # duplicate row
        {"file": "", "text": "A TEXT ONLY REVIEW THAT IS GREAT", "label": "2.5"},
    ]
    pl.DataFrame(rows).write_csv(root / "manifest.csv")
    return root


def read(uri: str, schema) -> pl.DataFrame:
    return pl.from_arrow(storage.read_table(uri, schema))


def test_preprocess_outputs_rejects_and_reruns(tmp_path, ray_local):
    src = make_input(tmp_path / "in")
    out = str(tmp_path / "out")
    argv = ["--input", str(src), "--manifest", str(src / "manifest.csv"), "--output", out]
    assert preprocess.main(argv) == 0

    utt = read(f"{out}/utterances", UTTERANCES_SCHEMA)
    rej = read(f"{out}/rejects", REJECTS_SCHEMA)
    assert set(utt["source"]) == {"terrible_film.wav", "two_speakers.wav", "manifest:10"}
    assert utt["utterance_id"].n_unique() == utt.height  # the duplicate manifest row added nothing
    two = utt.filter(pl.col("source") == "two_speakers.wav").sort("start")
    assert two["speaker"].n_unique() == 2  # two voices found
    audio_rows = utt.filter(pl.col("audio_present"))
    assert (audio_rows["feature_set"] == "egemaps_v02_lld").all() and (audio_rows["feature_dim"] == 25).all()
    words = audio_rows["words"].explode()
    assert all(len(w["features"]) == 25 and w["end"] > w["start"] for w in words.to_list())
    text_row = utt.filter(pl.col("source") == "manifest:10").row(0, named=True)
    assert text_row["audio_present"] is False and text_row["label"] == 2.5 and text_row["feature_set"] == "none"

    reasons = dict(zip(rej["source"], rej["reason"]))
    assert set(reasons) == {"empty.mp4", "truncated.mp4", "random.mp4", "silence.wav", "missing.wav", "../outside.wav"}
    assert "outside the input root" in reasons["../outside.wav"]
    assert "does not exist" in reasons["missing.wav"]
    assert all(r for r in reasons.values())

    # A rerun does nothing new; a new clip is the only work of the next run.
    n_utt, n_rej = utt.height, rej.height
    assert preprocess.main(argv) == 0
    assert read(f"{out}/utterances", UTTERANCES_SCHEMA).height == n_utt
    assert read(f"{out}/rejects", REJECTS_SCHEMA).height == n_rej
    shutil.copy(CORPUS / "battery.ogg", src / "battery.ogg")
    assert preprocess.main(["--input", str(src), "--output", out, "--diarizer", "none"]) == 0
    after = read(f"{out}/utterances", UTTERANCES_SCHEMA)
    assert set(after["source"]) - set(utt["source"]) == {"battery.ogg"}
    assert after.filter(pl.col("source") == "battery.ogg")["words_source"].unique().to_list() == ["asr"]
    assert read(f"{out}/rejects", REJECTS_SCHEMA).height == n_rej  # the earlier rejects were not retried
    runs = pl.read_parquet(f"{out}/runs/*.parquet")
    assert runs.height == 3 and runs["n_skipped"].to_list()[1:] != [0, 0]


def test_preprocess_s3_output_and_polars(tmp_path, ray_local, s3_env):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CORPUS / "terrible_film.wav", src / "terrible_film.wav")
    out = f"s3://{s3_env}/prep"
    assert preprocess.main(["--input", str(src), "--output", out, "--diarizer", "none",
                            "--features", "mfcc"]) == 0
    df = pl.scan_parquet(f"{out}/utterances/**/*.parquet",
                         storage_options=storage.polars_storage_options(out)).collect()
    assert df.height >= 1 and df["feature_set"][0] != "egemaps_v02_lld"
    assert df["words_source"].unique().to_list() == ["asr"]


def test_malformed_manifest_fails_before_work(tmp_path, capsys):
    bad = tmp_path / "m.csv"
    bad.write_text("colour,shape\nred,round\n")
    assert preprocess.main(["--manifest", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a 'file' column" in err[0]
    assert not (tmp_path / "out" / "utterances").exists()
