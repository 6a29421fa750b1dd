"""Incremental, exactly-once batch jobs on Ray Data: the one mechanism preprocess and score share.

The driver plans and commits; workers read, compute and write:

1. **What is left to do** (``pending``): the ids already in the output are read as a Ray dataset (the key column
   only) and grouped with the new work items by key in one distributed hash shuffle; each group keeps at most
   one item (the first by an order column), marked ``done`` when the output already has its key. Nothing of it
   is ever a Python set in the driver or a copy in every actor.
2. **Workers write** (``StagedFiles``): a worker writes each batch's rows as Parquet files of whole work items,
   with deterministic names (run id + hash of the batch's keys), into the run's staging folder beside the
   dataset, and returns only a small manifest row per file (``MANIFEST_SCHEMA``: path, rows, bytes, counts).
   A retried batch (its actor died) rewrites the same names; a file whose worker died while writing it is in
   no manifest, so it is never published, and the staging folder is removed at the end.
3. **The driver publishes** (``Publisher``) the files named by the manifests it receives: as they arrive
   (preprocess) or all at the end (score). Each move is atomic per file, so a reader never sees a partial file;
   a run that fails before its commit publishes nothing of what it deferred.
4. **One tally and one run row** (``Tally``, ``record_run``) for both jobs, failed runs included.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from cmbert import storage
from cmbert.raysetup import data_context

DONE = "_done"
PLAN_CPUS = 0.25  # planning tasks (id columns, small rows) take a quarter core: they run beside the actors  # column ``pending`` adds: the output already holds this key
# One row per file a worker staged (``table`` set), or per batch for its counts (``table`` empty).
MANIFEST_SCHEMA = pa.schema([
    ("table", pa.string()),  # "utterances", "rejects", "scores"; "" on a counts-only row
    ("staged", pa.string()),  # filesystem path of the staged file
    ("rel", pa.string()),  # its path inside the dataset (hive folders + file name)
    ("rows", pa.int64()),
    ("bytes", pa.int64()),
    ("items", pa.int64()),  # work items (clips, utterances) whose rows the file holds / the batch processed
    ("skipped", pa.int64()),  # items of the batch the output already had (counts row only)
    ("rejected", pa.int64()),
    ("excluded", pa.int64()),  # rejected items no worker attempted (e.g. no audio for an audio model)
    ("audio_seconds", pa.float64()),
    ("reasons", pa.string()),  # JSON {reason: count} of the batch's rejected items (counts row only)
])


# ---------------------------------------------------------------- what is left to do


def read_keys(uri: str, key: str, schema: pa.Schema, keep=None):
    """The ``key`` column of a published dataset as a Ray dataset (None when it has no files yet).

    ``keep(table) -> boolean mask`` drops rows (e.g. rejects that are not final); it runs in the read tasks."""
    import ray

    loc = storage.locate(uri)
    files = storage.list_files(uri)
    if not files:
        return None
    columns = [key] + ([c for c in getattr(keep, "columns", ()) if c != key])
    ds = ray.data.read_parquet(files, filesystem=loc.fs, columns=columns, num_cpus=PLAN_CPUS,
                               partitioning=None, override_num_blocks=min(len(files), 200))
    if keep is not None:
        ds = ds.map_batches(partial(_kept, keep=keep, key=key), batch_format="pyarrow", batch_size=None,
                            num_cpus=PLAN_CPUS)
    return ds


def _kept(t: pa.Table, keep, key: str) -> pa.Table:
    return t.filter(keep(t)).select([key])


def pending(items, done, key: str, order: str, schema: pa.Schema, partitions: int, keep_done: bool = False):
    """One row per distinct ``key`` of ``items`` that ``done`` does not hold: its first by ``order``.

    ``items`` and ``done`` are Ray datasets; ``done`` has the key column only (or is None). Keys only in ``done``
    produce nothing. With ``keep_done`` the keys both hold come too, with ``DONE`` true (to be counted).
    ``schema`` is the items' schema (done rows are padded to it for the shuffle)."""
    data_context()
    items = items.map_batches(partial(_with_done, flag=False, schema=schema), batch_format="pyarrow",
                              batch_size=None, num_cpus=PLAN_CPUS)
    if done is not None:
        items = items.union(done.map_batches(partial(_with_done, flag=True, schema=schema), batch_format="pyarrow",
                                             batch_size=None, num_cpus=PLAN_CPUS))
    return items.groupby(key, num_partitions=partitions).map_groups(
        partial(_first_of_group, order=order, keep_done=keep_done), batch_format="pyarrow")


def _with_done(t: pa.Table, flag: bool, schema: pa.Schema) -> pa.Table:
    cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols + [pa.array([flag] * t.num_rows, pa.bool_())],
                                schema=schema.append(pa.field(DONE, pa.bool_())))


def _first_of_group(group: pa.Table, order: str, keep_done: bool) -> pa.Table:
    done = pc.any(group.column(DONE)).as_py()
    rows = group.filter(pc.invert(group.column(DONE)))
    if rows.num_rows == 0 or (done and not keep_done):
        return rows.slice(0, 0)  # a key only the output has (not part of this run), or done
    first = rows.sort_by(order).slice(0, 1)
    if done:
        first = first.set_column(first.schema.get_field_index(DONE), DONE, pa.array([True], pa.bool_()))
    return first


FILE_TASK_SCHEMA = pa.schema([("path", pa.string()), ("ids", pa.list_(pa.string())), ("n_done", pa.int64())])


def by_file(plan, key: str, path: str, partitions: int):
    """``pending(..., keep_done=True)`` rows grouped by input file: one row per file with the keys to do in it
    (``ids``) and how many of its keys were done (``n_done``), in ``partitions`` blocks. Workers then read each
    file once.

    The group by hands its small output back as one block, and an actor pool runs one block as one task: without
    the split, every file of a run went to one actor (bench/profile_driver.py: 16 files, one task, one result
    block at the end), the other actors idle and the job's progress line silent until the end."""
    data_context()
    return plan.groupby(path, num_partitions=partitions).map_groups(partial(_file_task, key=key, path=path),
                                                                batch_format="pyarrow").repartition(partitions)


def _file_task(group: pa.Table, key: str, path: str) -> pa.Table:
    done = group.column(DONE)
    todo = group.filter(pc.invert(done)).column(key).to_pylist()
    return pa.Table.from_pylist([{"path": group.column(path)[0].as_py(), "ids": todo,
                                  "n_done": int(pc.sum(done.cast(pa.int64())).as_py() or 0)}], schema=FILE_TASK_SCHEMA)


# ---------------------------------------------------------------- workers write


@dataclass(frozen=True)
class StagedFiles:
    """Where one run's workers write one table: the staging folder, the filesystem, the file metadata.

    Pickles to the actors with its filesystem (an S3 one carries its endpoint and credentials: actors need no
    AWS environment, and nothing lands in a Ray runtime_env)."""

    table: str  # manifest name: utterances, rejects, scores
    fs: pafs.FileSystem
    staging: str  # filesystem path of the run's staging folder
    final: str  # filesystem path of the dataset
    uri: str  # the dataset's URI, for messages
    schema: pa.Schema
    run_id: str
    metadata: dict = field(default_factory=dict, hash=False)
    endpoint: str | None = None  # the S3 endpoint for error messages (credential-free), as the driver sees it

    @classmethod
    def for_run(cls, table: str, uri: str, schema: pa.Schema, run_id: str, metadata: dict | None = None):
        loc = storage.locate(uri)
        staging = storage.staging_location(loc, run_id)
        return cls(table, loc.fs, staging.path, loc.path, loc.uri, schema, run_id,
                   storage.safe_metadata(metadata), storage.safe_endpoint() if loc.is_s3 else None)

    def write(self, rows: pa.Table, keys: Iterable[str], items: int, sub: tuple[str, ...] = (),
              part: int = 0, drop: tuple[str, ...] = ()) -> dict:
        """Stage one file of complete work items; returns its manifest row. The name is a function of the run
        and the batch's keys, so a retried batch rewrites the same file instead of adding one."""
        digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
        rel = posixpath.join(*sub, f"part-{self.run_id}-{digest}-{part:03d}.parquet")
        nbytes = storage.write_staged(rows, self.fs, posixpath.join(self.staging, rel), self.uri, self.schema,
                                      metadata=self.metadata, drop=drop, endpoint=self.endpoint)
        return manifest_row(table=self.table, staged=posixpath.join(self.staging, rel), rel=rel,
                            rows=rows.num_rows, bytes=nbytes, items=items)

    def discard(self) -> None:
        storage.remove_quietly(self.fs, self.staging)


def manifest_row(**values) -> dict:
    row = {f.name: None for f in MANIFEST_SCHEMA} | {"table": "", "rows": 0, "bytes": 0, "items": 0, "skipped": 0,
                                                     "rejected": 0, "excluded": 0, "audio_seconds": 0.0, "reasons": "{}"}
    row.update(values)
    return row


def manifest_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


# ---------------------------------------------------------------- the driver publishes


@dataclass
class Tally:
    """What a run did, summed from the manifests (the driver never sees a result row)."""

    items: int = 0  # work items planned (clips or utterances in the input)
    processed: int = 0  # items a worker handled in this run
    skipped: int = 0  # items the output already had (or duplicates of an item of this run)
    output_rows: int = 0  # rows of the main table published (utterances, scores)
    rejected: int = 0
    excluded: int = 0  # of the rejected: not attempted
    audio_seconds: float = 0.0
    files: int = 0
    bytes: int = 0
    reasons: dict = field(default_factory=dict)
    first_row_s: float | None = None  # seconds from the publisher's start to the first manifest

    def add(self, m: dict, main_table: str) -> None:
        if m["table"] == "":
            self.processed += m["items"]
            self.skipped += m["skipped"]
            self.rejected += m["rejected"]
            self.excluded += m["excluded"]
            self.audio_seconds += m["audio_seconds"]
            for reason, n in json.loads(m["reasons"] or "{}").items():
                self.reasons[reason] = self.reasons.get(reason, 0) + n
            return
        self.files += 1
        self.bytes += m["bytes"]
        if m["table"] == main_table:
            self.output_rows += m["rows"]


class Publisher:
    """Moves staged files named by manifests into their datasets, now (``defer=False``) or at ``commit``."""

    def __init__(self, targets: Iterable[StagedFiles], main_table: str, defer: bool):
        self.targets = {t.table: t for t in targets}
        self.main_table = main_table
        self.defer = defer
        self.waiting: list[dict] = []  # deferred manifests: one small row per file
        self.published: set[str] = set()  # names of files published by this run (a few per thousand rows)
        self.tally = Tally()
        self.t0 = time.monotonic()

    def add(self, manifest: pa.Table) -> None:
        if self.tally.first_row_s is None:
            self.tally.first_row_s = time.monotonic() - self.t0
        for m in manifest.to_pylist():
            self.tally.add(m, self.main_table)
            if m["table"]:
                (self.waiting.append(m) if self.defer else self._publish(m))

    def commit(self) -> None:
        for m in self.waiting:
            self._publish(m)
        self.waiting = []
        self.discard()

    def discard(self) -> None:
        for t in self.targets.values():
            t.discard()

    def _publish(self, m: dict) -> None:
        target = self.targets[m["table"]]
        final = posixpath.join(target.final, m["rel"])
        if final in self.published:  # a batch delivered twice would be a Ray bug; never publish it twice
            raise RuntimeError(f"file {m['rel']} of {target.uri} was reported twice")
        storage.publish_file(target.fs, m["staged"], final, target.uri)
        self.published.add(final)


PROGRESS_EVERY_S = 5.0  # a job's progress line at most this often (the first batch's at once)


def drain(results, publisher: Publisher, line=None) -> None:
    """Consume a dataset of manifest rows into the publisher; shut the executor down on failure too.

    ``line(tally) -> str`` is the job's progress line, printed at most every ``PROGRESS_EVERY_S``: the job's own
    progress on its console (Ray Data's progress bars are off, ``raysetup.data_context``)."""
    import contextlib

    batches = iter(results.iter_batches(batch_format="pyarrow", batch_size=None))
    last = -PROGRESS_EVERY_S  # the first batch's line at once
    with contextlib.closing(batches):
        for block in batches:
            publisher.add(block)
            if line is not None and time.monotonic() - last >= PROGRESS_EVERY_S:
                print(line(publisher.tally), flush=True)
                last = time.monotonic()


# Ray Data appends its retry advice to a worker's exception message; the user's one line is ours alone.
RAY_RETRY_ADVICE = "Failed to apply UDF transform after"


def user_error(exc: BaseException) -> BaseException:
    """The StorageError/SchemaMismatchError a worker raised, unwrapped from Ray's task error and without Ray's retry
    advice (else ``exc``)."""
    seen = set()
    cur = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur) in (storage.StorageError, storage.SchemaMismatchError):  # not Ray's wrapper subclasses
            text = str(cur)
            return type(cur)(text.split(RAY_RETRY_ADVICE)[0].rstrip()) if RAY_RETRY_ADVICE in text else cur
        cur = getattr(cur, "cause", None) or cur.__cause__
    return exc


# ---------------------------------------------------------------- the run row


def record_run(output: str, job: str, status: str, *, run_id: str, started, config, input: str, tally: Tally,
               model_version: str | None = None) -> None:
    """One row in OUTPUT/runs/ for a run that succeeded or failed (a failed run's store may be down: then say so)."""
    from cmbert.runinfo import write_run_row

    try:
        write_run_row(output, job=job, status=status, run_id=run_id, started=started, config=config, input=input,
                      n_input=tally.items, n_output=tally.output_rows if status == "succeeded" else 0,
                      n_rejected=tally.rejected, n_skipped=tally.skipped, audio_seconds=tally.audio_seconds,
                      model_version=model_version)
    except storage.StorageError as exc:
        if status == "succeeded":
            raise
        print(f"[{job}] could not record the failed run: {exc}", file=sys.stderr)


