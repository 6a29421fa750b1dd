"""Manifest parsing and input listing: the rejects and errors found before any audio is read."""

import polars as pl
import pytest

from cmbert.inputs import ManifestError, build_tasks, list_media, parse_label, read_manifest, safe_relative


def test_safe_relative_refuses_escapes():
    assert safe_relative("a/b.wav") == "a/b.wav"
    assert safe_relative("./a//b.wav") == "a/b.wav"
    assert safe_relative("-dash file ü.wav") == "-dash file ü.wav"
    for bad in ("../x.wav", "a/../../x.wav", "/etc/passwd", "s3://other/x.wav", "", "."):
        assert safe_relative(bad) is None, bad


@pytest.mark.parametrize(
    "value, label, problem",
    [("1.5", 1.5, None), ("", None, None), ("nan", None, None), (None, None, None),
     ("positive", None, "not a number"), ("7", None, "outside"), ("-3", -3.0, None)],
)
def test_parse_label(value, label, problem):
    got, why = parse_label(value)
    assert got == label
    assert (why is None) if problem is None else (problem in why)


def test_text_only_manifest_and_duplicates(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("text\tlabel\nGREAT MOVIE\t2.4\nAWFUL PLOT\t-2\nGREAT MOVIE\t2.4\n\t1\nOK\tbad\n")
    tasks, rejects = build_tasks(None, read_manifest(str(path)))
    assert [t["text"] for t in tasks] == ["GREAT MOVIE", "AWFUL PLOT", "GREAT MOVIE"]
    assert all(t["kind"] == "text" for t in tasks)
    reasons = sorted(r.reason for r in rejects)
    assert len(rejects) == 2
    assert "neither a file nor a transcript" in reasons[1] or "neither a file nor a transcript" in reasons[0]
    assert any("not a number" in r for r in reasons)


def test_media_manifest_rejects_escape_and_bad_segment(tmp_path):
    (tmp_path / "in").mkdir()
    manifest = pl.DataFrame({"file": ["a.wav", "../secret.wav", "b.wav"], "text": ["hi", "x", "y"],
                             "start": ["", "", "5"], "end": ["", "", "2"], "channel": ["yt", "yt", "tv"]})
    tasks, rejects = build_tasks(str(tmp_path / "in"), manifest)
    assert [t["source"] for t in tasks] == ["a.wav"]
    assert tasks[0]["extra"] == [("channel", "yt")]
    assert {r.stage for r in rejects} == {"manifest"}
    assert any("outside the input root" in r.reason for r in rejects)
    assert any("not after start" in r.reason for r in rejects)


def test_manifest_errors_before_work(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing,useful\n1,2\n")
    with pytest.raises(ManifestError, match="neither a 'file' column"):
        build_tasks(None, read_manifest(str(bad)))
    with pytest.raises(ManifestError, match="--input"):
        build_tasks(None, pl.DataFrame({"file": ["a.wav"]}))


def test_list_media_skips_hidden_and_non_media(tmp_path):
    for name in ("a.mp4", "sub/b.flac", "notes.txt", ".hidden/c.wav", "_staging/d.wav"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert list_media(str(tmp_path)) == ["a.mp4", "sub/b.flac"]
