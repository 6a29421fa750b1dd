"""Manifest parsing and input listing: the rejects and errors found before any audio is read."""

import polars as pl
import pytest

from cmbert.inputs import ManifestError, build_tasks, list_media, parse_label, read_manifest, safe_relative
from cmbert.manifest import Clip, Utterance, task_id, utterance_id


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
    assert [t.text for t in tasks] == ["GREAT MOVIE", "AWFUL PLOT", "GREAT MOVIE"]
    assert all(t.kind == "text" for t in tasks)
    assert len({t.row for t in tasks}) == 3  # the repeated row is a row of its own
    reasons = sorted(r.reason for r in rejects)
    assert len(rejects) == 2
    assert "neither a file nor a transcript" in reasons[1] or "neither a file nor a transcript" in reasons[0]
    assert any("not a number" in r for r in reasons)


def test_media_manifest_rejects_escape_and_bad_segment(tmp_path):
    (tmp_path / "in").mkdir()
    manifest = pl.DataFrame({"file": ["a.wav", "../secret.wav", "b.wav"], "text": ["hi", "x", "y"],
                             "start": ["", "", "5"], "end": ["", "", "2"], "channel": ["yt", "yt", "tv"]})
    tasks, rejects = build_tasks(str(tmp_path / "in"), manifest)
    assert [t.source for t in tasks] == ["a.wav"]
    assert tasks[0].extra == (("channel", "yt"),)
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


def row_ids(tasks: list) -> list[str]:
    """The task id each task's clip gets (media clips: a stand-in content hash, as the actor computes it)."""
    return [t.clip("t" if t.kind == "text" else "c").task_id for t in tasks]


def test_annotated_rows_are_one_task_each_and_keep_their_ids(tmp_path):
    """One annotated row = one task with its own deterministic id; unannotated files stay one shared task."""
    (tmp_path / "in").mkdir()
    rows = {"file": ["a.wav", "a.wav", "a.wav", "a.wav", "b.wav", "b.wav", "", "", "a.wav"],
            "text": ["hi there", "hi there", "", "", "", "", "SAME WORDS", "SAME WORDS", "hi there"],
            "label": ["1", "-1", "2", "", "", "", "1", "1", "1"],
            "start": ["", "", "", "", "", "", "", "", "3"], "end": ["", "", "", "", "", "", "", "", "4"]}
    manifest = pl.DataFrame(rows)
    tasks, rejects = build_tasks(str(tmp_path / "in"), manifest)
    assert not rejects and len(tasks) == 9
    keys = [t.row for t in tasks]
    # transcript and/or label: a row key, distinct even for identical rows (the two SAME WORDS rows) ...
    assert all(k is not None for k in keys[:3] + keys[6:]) and len(set(keys[:3] + keys[6:])) == 6
    # ... no annotation: no key, so a file named twice is one clip, split into utterances as before
    assert keys[3] is None and keys[4] is None and keys[5] is None
    ids = row_ids(tasks)
    assert ids[4] == ids[5] == "c" and ids[3] == "c"
    assert len(set(ids[:3] + ids[6:])) == 6 and all(i.startswith(("c-r", "t-r")) for i in ids[:3] + ids[6:])
    # deterministic: the same manifest gives the same ids; a corrected label or another row inserted before
    # them changes no id; only the order among rows that name the same thing decides which is which
    assert row_ids(build_tasks(str(tmp_path / "in"), manifest)[0]) == ids
    first = {k: v[0] for k, v in rows.items()} | {"label": "-3"}
    inserted = {"file": "z.wav", "text": "new row", "label": "0", "start": "", "end": ""}
    edited = pl.DataFrame([first, inserted] + manifest.slice(1).to_dicts())
    moved = row_ids(build_tasks(str(tmp_path / "in"), edited)[0])
    assert moved[:1] + moved[2:] == ids and moved[1] not in ids


def test_ids_of_a_whole_row_and_of_split_utterances():
    row = Clip("abc", "a.wav", "hi", 1.0, row="0123456789ab")
    assert row.whole and row.task_id == "abc-r0123456789ab"
    utt = Utterance("abc", row.task_id, "a.wav", None, 1.25, 2.0, "hi", (), "align", "none", 0, row=row.row)
    assert utt.utterance_id == row.task_id == utterance_id("abc", 1.25, row.row)  # one row, one task, one utterance
    # an unannotated clip is split; its utterances are named by clip id + start in ms, its task by the clip id
    bare = Clip("abc", "a.wav")
    assert not bare.whole and bare.task_id == "abc" == task_id("abc")
    assert Utterance("abc", "abc", "a.wav", None, 1.25, 2.0, "hi", (), "asr", "none", 0).utterance_id == "abc-000001250"
    # a transcript, a label or segment bounds each make a clip whole, even without a row key
    assert Clip("abc", "a.wav", text="hi").whole and Clip("abc", "a.wav", label=0.0).whole
    assert Clip("abc", "a.wav", start=1.0, end=2.0).whole and Clip("abc", "a.wav", start=1.0, end=2.0).task_id == "abc-1000-2000"


def test_a_task_reaches_the_workers_as_it_left(tmp_path):
    """A planned task survives the plan's Arrow table (``schemas.CLIP_TASK_SCHEMA``) unchanged: absent values stay
    None (not NaN or ""), the carried columns stay an ordered tuple of pairs (not JSON)."""
    from dataclasses import replace

    from cmbert.manifest import ClipTask, Reject
    from cmbert.stages import task_table

    (tmp_path / "in").mkdir()
    manifest = pl.DataFrame({"file": ["a.wav", "b.wav", "", "../x.wav"], "text": ["hi", "", "JUST TEXT", "x"],
                             "label": ["1.5", "", "-1", "1"], "start": ["", "2", "", ""],
                             "end": ["", "3.5", "", ""], "zeta": ["z", None, "z3", "z4"],
                             "alpha": ["a", "b", None, "a4"]})
    tasks, rejects = build_tasks(str(tmp_path / "in"), manifest)
    assert len(tasks) == 3 and len(rejects) == 1
    table = task_table(tasks, rejects)
    back = [ClipTask.from_row(r) for r in table.to_pylist()]
    planned = [*tasks, ClipTask.of_reject(rejects[0])]
    assert back == [replace(t, order=i) for i, t in enumerate(planned)]
    media, segment, text = back[:3]
    assert media.extra == (("zeta", "z"), ("alpha", "a")) and media.start is None and media.row is not None
    assert segment.label is None and segment.text is None and (segment.start, segment.end) == (2.0, 3.5)
    assert segment.row is None and segment.task_id is None  # named by its bytes, later
    assert text.clip_id is not None and text.task_id == text.clip(text.clip_id).task_id
    assert back[3].reject() == rejects[0] and isinstance(back[3].reject(), Reject)
