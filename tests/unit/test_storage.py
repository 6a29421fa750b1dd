"""cmbert.storage on a local path and on a real S3 server (SeaweedFS on loopback, see conftest.py)."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cmbert import storage
from cmbert.storage import SchemaMismatchError, StorageError, conform, read_table, write_table
from schemas import ALL_SCHEMAS, REJECTS_SCHEMA, RUNS_SCHEMA, SCORES_SCHEMA, UTTERANCES_SCHEMA

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------- small valid tables


def utterance_rows(n: int = 2) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({
            "utterance_id": f"c{i:03d}-000001500", "task_id": f"c{i:03d}", "clip_id": f"c{i:03d}",
            "source": f"clips/{i}.wav", "speaker": "spk0" if i % 2 else None, "start": 1.5, "end": 3.25,
            "text": "the plot drags but the cast is lovely", "label": 0.5 * i - 1,
            "words": [
                {"word": "the", "start": 1.5, "end": 1.6, "speaker": "spk0", "features": [0.1, 0.2]},
                {"word": "plot", "start": 1.6, "end": 2.0, "speaker": None, "features": None},
            ],
            "words_source": "align", "audio_present": True, "feature_set": "egemaps_v02_lld",
            "feature_dim": 2, "extra": [("genre", "drama")], "run_id": "r1", "created_at": T0,
        })
    return rows


def reject_rows(n: int = 2) -> list[dict]:
    return [{"task_id": f"t{i}", "clip_id": f"c{i}", "source": f"bad/{i}.wav", "stage": "decode",
             "reason": "not an audio file", "run_id": "r1", "created_at": T0} for i in range(n)]


def score_rows(n: int = 2, date: str = "2025-01-02") -> list[dict]:
    return [{"utterance_id": f"c{i}-000000000", "clip_id": f"c{i}", "source": f"c{i}.wav", "speaker": None, "start": 0.0, "end": 2.0,
             "text": "fine", "score": 1.25, "polarity": "positive", "label7": 1, "model_id": "cmbert-tiny",
             "model_version": "0", "run_id": "r1", "scored_at": T0, "score_date": date} for i in range(n)]


def run_rows(n: int = 1) -> list[dict]:
    return [{"run_id": f"r{i}", "job": "preprocess", "status": "succeeded", "started_at": T0, "finished_at": T0,
             "duration_s": 1.0, "input": "in", "output": "out", "n_input": 3, "n_output": 2, "n_rejected": 1,
             "n_skipped": 0, "audio_seconds": 4.5, "model_version": None, "code_version": "abc123",
             "config_json": "{}"} for i in range(n)]


BUILDERS = {"utterances": utterance_rows, "rejects": reject_rows, "scores": score_rows, "runs": run_rows}


def valid_table(name: str, n: int = 2) -> pa.Table:
    return pa.Table.from_pylist(BUILDERS[name](n), schema=ALL_SCHEMAS[name])


def test_every_schema_has_a_builder():
    assert set(BUILDERS) == set(ALL_SCHEMAS)


def files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- conform


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_conform_keeps_a_valid_table(name):
    table = valid_table(name)
    out = conform(table, ALL_SCHEMAS[name])
    assert out.schema == ALL_SCHEMAS[name]
    assert out.schema.metadata == ALL_SCHEMAS[name].metadata
    assert out.to_pylist() == table.to_pylist()


def test_conform_casts_inferred_types_and_fills_nullable_columns():
    rows = utterance_rows(2)
    for r in rows:
        del r["extra"], r["speaker"]  # nullable: filled with nulls
    table = pa.Table.from_pylist(rows)  # inferred: int64 feature_dim, list<double> features, column order
    table = table.select(list(reversed(table.column_names)))
    out = conform(table, UTTERANCES_SCHEMA)
    assert out.schema == UTTERANCES_SCHEMA
    assert out.column("speaker").null_count == 2
    assert out.column("feature_dim").type == pa.int32()


@pytest.mark.parametrize(
    "change, column, phrase",
    [
        (lambda t: t.set_column(0, "utterance_id", pa.array([1, 2])), "utterance_id", "int cannot become a string"),
        (lambda t: t.set_column(t.schema.get_field_index("label"), "label", pa.array(["good", "bad"])),
         "label", "string cannot become a float"),
        (lambda t: t.drop_columns(["text"]), "text", "missing"),
        (lambda t: t.append_column("bogus", pa.array([1, 2])), "bogus", "not in schema"),
        (lambda t: t.set_column(t.schema.get_field_index("feature_dim"), "feature_dim",
                                pa.array([2**40, 1], pa.int64())), "feature_dim", "not in range"),
        (lambda t: t.set_column(t.schema.get_field_index("run_id"), "run_id", pa.array(["r", None])),
         "run_id", "nulls"),
    ],
    ids=["int-for-string", "string-for-float", "missing-required", "extra", "overflow", "null-in-required"],
)
def test_conform_rejects_naming_the_column(change, column, phrase):
    table = change(valid_table("utterances"))
    with pytest.raises(SchemaMismatchError) as err:
        conform(table, UTTERANCES_SCHEMA)
    msg = str(err.value)
    assert repr(column) in msg and phrase in msg.lower()
    assert "\n" not in msg


def test_conform_checks_nested_fields():
    rows = utterance_rows(2)
    rows[1]["words"][1]["word"] = None  # Word.word is not nullable
    with pytest.raises(SchemaMismatchError, match=r"'words\[\]\.word' has nulls"):
        conform(pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA), UTTERANCES_SCHEMA)  # Arrow lets it in
    with pytest.raises(SchemaMismatchError, match=r"column 'words' .*field 'word' .* has nulls"):
        conform(pa.Table.from_pylist(rows), UTTERANCES_SCHEMA)  # inferred types: the cast refuses it
    rows = utterance_rows(2)
    rows[0]["words"][0]["loudness"] = 3.0
    with pytest.raises(SchemaMismatchError, match=r"'words\[\]\.loudness'"):
        conform(pa.Table.from_pylist(rows), UTTERANCES_SCHEMA)
    rows = utterance_rows(2)
    for row in rows:
        row["words"][0]["features"] = ["loud", "soft"]
    with pytest.raises(SchemaMismatchError, match=r"'words\[\]\.features\[\]'"):
        conform(pa.Table.from_pylist(rows), UTTERANCES_SCHEMA)


def test_null_struct_inside_a_nullable_list_is_not_a_nested_violation():
    table = valid_table("utterances").slice(1)  # sliced arrays: offsets must be honoured
    assert conform(table, UTTERANCES_SCHEMA).num_rows == 1


# ---------------------------------------------------------------- local round trips


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_local_round_trip(tmp_path, name):
    schema = ALL_SCHEMAS[name]
    table = valid_table(name, 3)
    dest = tmp_path / "out" / name
    written = write_table(table, str(dest), schema, name="part-0")
    assert written == f"{dest}/part-0.parquet"
    back = read_table(str(dest), schema)
    assert back.schema.remove_metadata() == schema.remove_metadata()
    assert back.to_pylist() == table.to_pylist()
    assert pq.read_schema(written).metadata[b"cmbert.schema"] == name.encode()
    assert files_under(tmp_path / "out") == [f"{name}/part-0.parquet"]  # staging removed


def test_rewrite_with_the_same_name_overwrites(tmp_path):
    dest = str(tmp_path / "rejects")
    write_table(valid_table("rejects", 2), dest, REJECTS_SCHEMA, name="task-a")
    write_table(valid_table("rejects", 1), dest, REJECTS_SCHEMA, name="task-a")
    assert read_table(dest, REJECTS_SCHEMA).num_rows == 1


def test_missing_dataset_reads_as_empty_table(tmp_path):
    empty = read_table(str(tmp_path / "nothing"), SCORES_SCHEMA, columns=["clip_id"])
    assert empty.num_rows == 0 and empty.column_names == ["clip_id"]
    with pytest.raises(StorageError, match="no such dataset"):
        read_table(str(tmp_path / "nothing"))


def test_local_hive_partitions(tmp_path):
    dest = str(tmp_path / "scores")
    for date in ("2025-01-01", "2025-01-02"):
        write_table(pa.Table.from_pylist(score_rows(2, date)), dest, SCORES_SCHEMA, partition={"score_date": date})
    # a partition key that is not a column comes back as a string column
    write_table(valid_table("rejects", 2), str(tmp_path / "rej"), REJECTS_SCHEMA, partition={"shard": "a/b"})
    assert files_under(tmp_path / "scores")[0].startswith("score_date=2025-01-01/part-")
    one_day = read_table(dest, SCORES_SCHEMA, filter=pc.field("score_date") == "2025-01-02")
    assert one_day.num_rows == 2 and set(one_day.column("score_date").to_pylist()) == {"2025-01-02"}
    rej = read_table(str(tmp_path / "rej"), REJECTS_SCHEMA)
    assert rej.column_names[-1] == "shard" and set(rej.column("shard").to_pylist()) == {"a/b"}
    assert [p.parent.name for p in (tmp_path / "rej").rglob("*.parquet")] == ["shard=a%2Fb"]
    hive = pl.scan_parquet(str(tmp_path / "scores"), hive_partitioning=True).collect()
    assert hive.height == 4


def broken(table: pa.Table, change: str, *, wrong: str, missing: str, extra: str) -> tuple[pa.Table, str]:
    """``table`` with one schema fault (a column of the wrong type, one missing, one extra) and the column named."""
    if change == "wrong-type":
        return table.set_column(table.schema.get_field_index(wrong), wrong, pa.array(["x"] * table.num_rows)), wrong
    if change == "missing":
        return table.drop_columns([missing]), missing
    return table.append_column(extra, pa.array(["x"] * table.num_rows)), extra


@pytest.mark.parametrize("change", ["wrong-type", "missing", "extra"])
def test_schema_mismatch_writes_nothing(tmp_path, change):
    table, column = broken(valid_table("scores"), change, wrong="score", missing="model_id", extra="note")
    with pytest.raises(SchemaMismatchError, match=repr(column)):
        write_table(table, str(tmp_path / "scores"), SCORES_SCHEMA)
    assert list(tmp_path.iterdir()) == []


def test_failure_before_publish_leaves_nothing_locally(tmp_path, monkeypatch):
    def broken_publish(*args, **kwargs):
        raise StorageError("simulated failure between staging and publish")

    monkeypatch.setattr(storage.datasets, "publish_file", broken_publish)
    with pytest.raises(StorageError, match="simulated"):
        write_table(valid_table("rejects"), str(tmp_path / "rejects"), REJECTS_SCHEMA)
    assert not (tmp_path / "rejects").exists()
    assert files_under(tmp_path) == []  # the staged file is gone too


def test_metadata_never_carries_credentials(tmp_path, monkeypatch):
    env_secret = "envSECRETvalue0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env_secret)
    secret = "s3cr3t-VALUE-9f8e7d"
    token = "hf_TOKENVALUE_abcdef"
    metadata = {
        "aws_secret_access_key": secret,
        "AWS_SECRET_ACCESS_KEY": secret,
        "awsSessionToken": token,
        "config": {"lr": 0.1, "hf_token": token, "s3": {"password": secret, "bucket": "b"}},
        "config_json": json.dumps({"api_key": secret, "epochs": 2}),
        "note": f"copied from the environment: {env_secret}",
        "tokenizer": "wordpiece",
        "code_version": "abc123",
    }
    path = write_table(valid_table("runs"), str(tmp_path / "runs"), RUNS_SCHEMA, metadata=metadata)
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items()}
    for dropped in ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "awsSessionToken", "note"):
        assert dropped not in meta
    assert meta["tokenizer"] == "wordpiece" and meta["code_version"] == "abc123"
    assert json.loads(meta["config"]) == {"lr": 0.1, "s3": {"bucket": "b"}}
    assert json.loads(meta["config_json"]) == {"epochs": 2}
    raw = open(path, "rb").read()
    for value in (secret, token, env_secret):
        assert value.encode() not in raw


def test_explain_is_one_line_without_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:pw123456@127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topSECRETkey42")
    cases = {
        "AWS Error NETWORK_CONNECTION during HeadBucket operation: curlCode: 7, Could not connect": "unreachable",
        "AWS Error SIGNATURE_DOES_NOT_MATCH during PutObject operation: signature": "credentials",
        "AWS Error ACCESS_DENIED during HeadObject operation: No response body.": "credentials",
        "AWS Error INVALID_ACCESS_KEY_ID during ListObjectsV2": "credentials",
        "AWS Error NETWORK_CONNECTION during UploadPart operation: curlCode: 56, Failure when receiving data from "
        "the peer": "unreachable",
        "AWS Error INTERNAL_FAILURE during PutObject operation: We encountered an internal error": "server error",
        "AWS Error UNKNOWN (HTTP status 503) during CompleteMultipartUpload operation": "server error",
        "something odd\nwith topSECRETkey42 on a second line": "something odd",
        "weird topSECRETkey42 error": "weird *** error",
    }
    for text, phrase in cases.items():
        msg = str(storage.explain(OSError(text), "s3://bkt/ds", "write"))
        assert phrase in msg and "\n" not in msg, msg
        assert "topSECRETkey42" not in msg and "pw123456" not in msg, msg


def test_user_error_is_the_workers_line_without_rays_advice():
    from cmbert.incremental import user_error

    ours = StorageError("cannot write s3://b/x: S3 endpoint http://h:1 is unreachable")
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = StorageError(f"{ours}\nFailed to apply UDF transform after 1/1 attempts (total backoff 0s).")
    got = user_error(wrapped)
    assert type(got) is StorageError and str(got) == str(ours)
    assert user_error(ours) is ours
    other = ValueError("not ours")
    assert user_error(other) is other


def test_polars_storage_options_local_is_none():
    assert storage.polars_storage_options("/tmp/x") is None


# ---------------------------------------------------------------- blobs: bytes, JSON, listings, folders


def test_bytes_and_json_round_trip_locally(tmp_path):
    import hashlib

    target = str(tmp_path / "a" / "b" / "doc.json")
    assert not storage.exists(target)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(target)
    assert storage.write_json(target, {"b": 1, "a": {"when": T0}}) == target
    assert storage.exists(target)
    text = (tmp_path / "a" / "b" / "doc.json").read_text()
    assert text == storage.json_text({"a": {"when": T0}, "b": 1})  # one layout: indented, sorted, str() for others
    assert storage.read_json(target) == {"a": {"when": str(T0)}, "b": 1}
    storage.write_bytes(target, b"\x00\x01")  # overwrites in place
    assert storage.read_bytes(target) == b"\x00\x01"
    assert storage.sha256(target) == (hashlib.sha256(b"\x00\x01").hexdigest(), 2)
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["doc.json"]  # no temporary file left
    with pytest.raises(ValueError):
        storage.read_json(target)


def test_list_files_rule_for_hidden_entries_is_a_parameter(tmp_path):
    for rel in ("a.parquet", "sub/b.parquet", "_staging/c.parquet", ".tmp/d.parquet", "sub/.e.parquet", "f.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert storage.list_files(str(tmp_path), relative=True) == ["a.parquet", "sub/b.parquet"]
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "a.parquet"), str(tmp_path / "sub" / "b.parquet")]
    assert storage.list_files(str(tmp_path), skip_hidden=False, relative=True) == [
        ".tmp/d.parquet", "_staging/c.parquet", "a.parquet", "sub/.e.parquet", "sub/b.parquet"]
    assert storage.list_files(str(tmp_path), suffix=None, recursive=False, relative=True) == ["a.parquet", "f.txt"]
    assert storage.list_files(str(tmp_path / "nothing")) == []


def test_copy_tree_puts_the_last_file_last_and_drops_an_old_one_first(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("meta.json", "b.bin", "a.bin", "state.pt"):
        storage.write_bytes(str(src / name), name.encode())
    storage.write_bytes(str(dst / "meta.json"), b"old")
    order = storage.copy_tree(str(src), str(dst), skip=("state.pt",), last=("meta.json",))
    assert order == ["a.bin", "b.bin", "meta.json"]
    assert sorted(p.name for p in dst.iterdir()) == order  # nothing skipped arrives, no .partial is left
    assert storage.read_bytes(str(dst / "meta.json")) == b"meta.json"


def test_one_filesystem_per_settings_and_it_pickles(monkeypatch):
    import pickle

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKONE0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secretone")
    a, b = storage.locate("s3://bkt/x"), storage.locate("s3://bkt/y/z")
    assert a.fs is b.fs and storage.filesystem("s3://other") is a.fs
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secrettwo")  # other credentials: another filesystem
    assert storage.locate("s3://bkt/x").fs is not a.fs
    back = pickle.loads(pickle.dumps(a.join("k")))
    assert isinstance(back.fs, storage.pafs.S3FileSystem) and back.path == "bkt/x/k" and back.uri == "s3://bkt/x/k"
    assert storage.locate("/tmp").fs is storage.locate("relative/path").fs


# ---------------------------------------------------------------- S3 (real server)


def _uri(bucket: str, *parts: str) -> str:
    return "/".join([f"s3://{bucket}", *parts])


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_s3_round_trip(s3_server, s3_env, name):
    bucket = s3_env
    schema = ALL_SCHEMAS[name]
    table = valid_table(name, 3)
    uri = _uri(bucket, "run1", name)
    written = write_table(table, uri, schema, name="part-0")
    assert written == f"{uri}/part-0.parquet"
    back = read_table(uri, schema)
    assert back.to_pylist() == table.to_pylist()
    keys = s3_server.list_keys(bucket)
    assert f"run1/{name}/part-0.parquet" in keys
    assert not [k for k in keys if k.endswith(".parquet") and "_staging" in k]  # staging cleaned up
    assert [k for k in keys if k.startswith(f"run1/{name}/") and k.endswith(".parquet")] == [
        f"run1/{name}/part-0.parquet"]


def test_s3_polars_scan_with_hive_partitions(s3_env):
    bucket = s3_env
    uri = _uri(bucket, "scores")
    for date in ("2025-01-01", "2025-01-02"):
        write_table(pa.Table.from_pylist(score_rows(3, date)), uri, SCORES_SCHEMA, partition={"score_date": date})
    frame = pl.scan_parquet(f"{uri}/**/*.parquet", storage_options=storage.polars_storage_options(uri)).collect()
    assert frame.height == 6
    assert sorted(frame["score_date"].unique().to_list()) == ["2025-01-01", "2025-01-02"]
    assert frame.schema["label7"] == pl.Int8 and frame.schema["score"] == pl.Float32
    day = read_table(uri, SCORES_SCHEMA, filter=pc.field("score_date") == "2025-01-01")
    assert day.num_rows == 3
    hive = pl.scan_parquet(f"{uri}/", storage_options=storage.polars_storage_options(uri),
                           hive_partitioning=True).collect()
    assert hive.height == 6


def test_s3_dataset_at_bucket_root(s3_server, s3_env):
    bucket = s3_env
    write_table(valid_table("rejects"), _uri(bucket), REJECTS_SCHEMA, name="part-0")
    assert read_table(_uri(bucket), REJECTS_SCHEMA).num_rows == 2
    assert [k for k in s3_server.list_keys(bucket) if k.endswith(".parquet")] == ["part-0.parquet"]


def test_s3_publish_dir(s3_server, s3_env):
    bucket = s3_env
    final = _uri(bucket, "utterances")
    staging = storage.new_staging_uri(final)
    assert "/_staging/" in staging and not staging.startswith(final + "/")
    for i in range(2):
        pq.write_table(valid_table("utterances"), f"{storage.locate(staging).path}/f{i}.parquet",
                       filesystem=storage.locate(staging).fs)
    assert storage.publish_dir(staging, final) == ["f0.parquet", "f1.parquet"]
    assert read_table(final, UTTERANCES_SCHEMA).num_rows == 4
    assert not [k for k in s3_server.list_keys(bucket) if "_staging" in k and k.endswith(".parquet")]


@pytest.mark.parametrize("change", ["wrong-type", "missing", "extra"])
def test_s3_schema_mismatch_writes_nothing(s3_server, s3_env, change):
    bucket = s3_env
    table, column = broken(valid_table("utterances"), change, wrong="audio_present", missing="words",
                           extra="secret_notes")
    with pytest.raises(SchemaMismatchError, match=repr(column)):
        write_table(table, _uri(bucket, "utterances"), UTTERANCES_SCHEMA)
    assert s3_server.list_keys(bucket) == []


def write_and_read_errors(uri: str) -> list[str]:
    """The StorageError messages of a write and then a read of dataset ``uri`` (each must raise one)."""
    messages = []
    for action in (lambda: write_table(valid_table("rejects"), uri, REJECTS_SCHEMA),
                   lambda: read_table(uri, REJECTS_SCHEMA)):
        with pytest.raises(StorageError) as err:
            action()
        messages.append(str(err.value))
    return messages


def test_s3_unreachable_endpoint_is_one_clear_line(s3_server, s3_env, monkeypatch):
    bucket = s3_env
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.unreachable_endpoint())
    for msg in write_and_read_errors(_uri(bucket, "rejects")):
        assert "\n" not in msg and "unreachable" in msg and "127.0.0.1" in msg
        assert s3_server.secret_key not in msg and s3_server.access_key not in msg
    assert s3_server.list_keys(bucket) == []


@pytest.mark.parametrize("which", ["secret", "access-key"])
def test_s3_bad_credentials_is_one_clear_line(s3_server, s3_env, monkeypatch, which):
    bucket = s3_env
    wrong = "WRONGsecretVALUE123456"
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY000000000")
    for msg in write_and_read_errors(_uri(bucket, "rejects")):
        assert "\n" not in msg and "credentials" in msg, msg
        for secret in (wrong, s3_server.secret_key):
            assert secret not in msg
    assert s3_server.list_keys(bucket) == []


def test_s3_failure_before_publish_leaves_nothing(s3_server, s3_env, monkeypatch):
    bucket = s3_env
    real_move = storage.pafs.S3FileSystem.move

    def broken_publish(fs, src, dst, uri):
        assert fs.get_file_info(src).type == storage.pafs.FileType.File  # really staged
        raise StorageError("simulated failure between staging and publish")

    monkeypatch.setattr(storage.datasets, "publish_file", broken_publish)
    with pytest.raises(StorageError, match="simulated"):
        write_table(valid_table("rejects"), _uri(bucket, "out", "rejects"), REJECTS_SCHEMA)
    keys = s3_server.list_keys(bucket)
    assert not [k for k in keys if k.startswith("out/rejects")]
    assert not [k for k in keys if k.endswith(".parquet")]
    assert real_move is storage.pafs.S3FileSystem.move


def test_s3_metadata_never_carries_credentials(s3_server, s3_env):
    bucket = s3_env
    path = write_table(valid_table("runs"), _uri(bucket, "runs"), RUNS_SCHEMA,
                       metadata={"config": {"aws_secret_access_key": s3_server.secret_key, "lr": 0.1},
                                 "copied": f"key={s3_server.secret_key}", "code_version": "abc"})
    key = path.split(f"s3://{bucket}/", 1)[1]
    raw = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert s3_server.secret_key.encode() not in raw
    assert b"abc" in raw


def test_s3_missing_bucket_is_one_clear_line(s3_env):
    missing = f"{s3_env}-missing"
    with pytest.raises(StorageError, match=r"^cannot write s3://.*: bucket does not exist at S3 endpoint http"):
        write_table(valid_table("rejects"), _uri(missing, "rejects"), REJECTS_SCHEMA)
    assert read_table(_uri(missing, "rejects"), REJECTS_SCHEMA).num_rows == 0


def test_s3_blob_verbs(s3_server, s3_env, tmp_path):
    bucket = s3_env
    doc = _uri(bucket, "docs", "meta.json")
    assert not storage.exists(doc)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(doc)
    storage.write_json(doc, {"format": "x", "n": 2})
    assert storage.read_json(doc) == {"format": "x", "n": 2} and storage.exists(_uri(bucket, "docs"))
    for name in ("a.bin", "meta.json"):
        storage.write_bytes(str(tmp_path / "ckpt" / name), name.encode() * 1000)
    assert storage.copy_tree(str(tmp_path / "ckpt"), _uri(bucket, "ckpt"), last=("meta.json",)) == ["a.bin",
                                                                                                   "meta.json"]
    assert s3_server.list_keys(bucket) == ["ckpt/a.bin", "ckpt/meta.json", "docs/meta.json"]  # no folder markers
    assert storage.list_files(_uri(bucket, "ckpt"), suffix=None, relative=True) == ["a.bin", "meta.json"]
    assert storage.sha256(_uri(bucket, "ckpt", "a.bin"))[1] == 5000
    local = storage.local_copy(_uri(bucket, "ckpt"), key=f"{bucket}|test", under=f"cmbert-test-{bucket}")
    assert (tmp_path / "ckpt" / "a.bin").read_bytes() == open(f"{local}/a.bin", "rb").read()
    assert storage.local_copy(_uri(bucket, "ckpt"), key=f"{bucket}|test", under=f"cmbert-test-{bucket}") == local
    storage.remove_tree(local)
    assert storage.local_copy(str(tmp_path / "ckpt"), key="x") == str(tmp_path / "ckpt")  # local: itself
