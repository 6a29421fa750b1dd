"""Bad inputs (issue 6): one preprocess job over a generated corpus of broken, odd and good clips, with a manifest
full of bad rows, and one of its Ray actors killed mid-run; then malformed manifests, refused before any work.

The corpus and what each row must give are in tests/helpers/bad_inputs.py. Clips, manifest and outputs are on the
session's S3 server (odd names become odd keys), so the run also shows that no credential reaches the job's
output or Ray's logs (a Ray runtime_env's env_vars are logged verbatim: the job must not put credentials there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.fs as pafs
import pytest

from cmbert import faults, storage
from jobs import preprocess
from schemas import REJECTS_SCHEMA, RUNS_SCHEMA, UTTERANCES_SCHEMA
from tests.helpers.bad_inputs import MAX_CLIP_SECONDS, make_bad_corpus


def read(uri: str, schema) -> pl.DataFrame:
    return pl.from_arrow(storage.read_table(uri, schema))


@pytest.mark.slow
def test_bad_input_corpus_one_job_with_a_worker_killed(tmp_path, ray_local, s3_server, s3_env, monkeypatch, capfd):
    src = tmp_path / "in"
    cases = make_bad_corpus(src, tmp_path / "gen")
    good = [c for c in cases if c.stage is None]
    bad = [c for c in cases if c.stage is not None]
    corpus, out = f"s3://{s3_env}/corpus", f"s3://{s3_env}/prep"  # input, manifest and output all on S3
    pafs.copy_files(str(src), storage.locate(corpus).path, destination_filesystem=storage.locate(corpus).fs)
    marker = tmp_path / "killed"
    # An actor dies with its second batch's files staged and their manifests not yet returned (20 tasks in
    # batches of 4 over 2 actors: some actor runs at least 3 batches).
    monkeypatch.setenv(faults.ENV, f"preprocess:1:{marker}")
    assert preprocess.main(["--input", corpus, "--manifest", f"{corpus}/manifest.csv", "--output", out,
                            "--diarizer", "none", "--max-clip-seconds", f"{MAX_CLIP_SECONDS:g}",
                            "--features", "egemaps"]) == 0
    printed = capfd.readouterr()
    assert "after 1 calls" in marker.read_text()  # the fault happened, and the job still completed

    utt = read(f"{out}/utterances", UTTERANCES_SCHEMA)
    rej = read(f"{out}/rejects", REJECTS_SCHEMA)
    # Every good clip is processed, once: its utterances carry timed words, features and the manifest's label.
    assert sorted(set(utt["source"])) == sorted(c.file for c in good)
    assert utt["utterance_id"].n_unique() == utt.height
    # one annotated manifest row = one utterance: the repeated first row is the one file with two
    per_file = dict(utt.group_by("source").len().iter_rows())
    assert per_file == {c.file: 2 if c.file == cases[0].file else 1 for c in good}
    for case in good:
        rows = utt.filter(pl.col("source") == case.file)
        assert rows["words_source"].unique().to_list() == [case.words_source], case.name
        assert rows["label"].to_list() == [case.label_out] * rows.height, case.name
        assert rows["audio_present"].all() and (rows["feature_dim"] == 25).all(), case.name
        words = rows["words"].explode().to_list()
        assert all(w["end"] > w["start"] and len(w["features"]) == 25 for w in words), case.name
        assert np.isfinite(np.array([w["features"] for w in words])).all(), case.name
    # Every bad one is rejected once, at its stage, with a reason that says what is wrong.
    assert rej.height == len(bad) and rej["task_id"].n_unique() == len(bad)
    by_source = {r["source"]: r for r in rej.iter_rows(named=True)}
    for case in bad:
        got = by_source[case.file]
        assert got["stage"] == case.stage and case.reason in got["reason"], (case.name, got)
    # The run's own count: every manifest row, and the same line printed.
    run = read(f"{out}/runs", RUNS_SCHEMA).row(0, named=True)
    assert (run["status"], run["n_input"], run["n_output"], run["n_rejected"], run["n_skipped"]) == (
        "succeeded", len(cases) + 1, utt.height, len(bad), 0)
    assert f"clips {len(cases) + 1}/{len(cases) + 1}  utterances {utt.height}  rejects {len(bad)}" in printed.out

    secrets = (s3_server.secret_key, s3_server.access_key)
    assert not any(s in printed.out + printed.err for s in secrets)
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    leaked = [str(p) for p in (session / "logs").rglob("*") if p.is_file()
              and any(s.encode() in p.read_bytes() for s in secrets)]
    assert not leaked, leaked


# Also refused before any work, tested elsewhere: no usable columns (test_preprocess_job.py), a missing manifest,
# and a manifest with a 'file' column but no --input (test_inputs.py).
MALFORMED = {
    "empty.csv": (b"", "empty CSV"),
    "binary.csv": (np.random.default_rng(0).bytes(3000), "not UTF-8 text"),
    "utf16.csv": ("file,text,label\na.wav,hi,1\n".encode("utf-16"), "not UTF-8 text"),
    "ragged.csv": (b"file,text,label\na.wav,hi,1\nb.wav,hi,1,extra,fields\n", "more fields"),
    "unclosed-quote.csv": (b'file,text,label\na.wav,"no end quote,1\nb.wav,x,2\n', "could not parse"),
    "two-file-columns.csv": (b"file,file,text\na.wav,b.wav,hi\n", "column 'file' appears more than once"),
    "corrupt.parquet": (np.random.default_rng(1).bytes(3000), "parquet"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_manifest_is_one_error_before_any_work(tmp_path, capsys, name):
    data, phrase = MALFORMED[name]
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "out"
    assert preprocess.main(["--input", str(tmp_path), "--manifest", str(tmp_path / name), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("preprocess: error: ") and phrase in err[0], err
    assert not out.exists()  # no output, no run row: nothing started

