"""Score: checkpoint + utterances -> one sentiment score per utterance (Ray Data batch inference).

    python jobs/score.py --checkpoint DIR_OR_S3_URI --input UTTERANCES_URI --output DIR_OR_S3_URI \
        [--gpu] [--batch-size N] [--actors N] [--score-date YYYY-MM-DD]

Writes OUTPUT/scores/score_date=.../model_version=.../*.parquet (schemas.SCORES_SCHEMA) and one row in
OUTPUT/runs/. Incremental and exactly-once: a run scores only the utterances this model version has not
scored yet; its files are written under a staging prefix and published together at the end, so a run that
dies publishes nothing and the next run does its work; a rerun adds nothing.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

try:
    import cmbert  # noqa: F401
except ImportError:  # run from a Ray working dir without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datetime as dt
import json
import contextlib
import math
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from cmbert import faults, storage
from cmbert.cli import parse_config
from cmbert.runinfo import new_run_id, utc_now, write_run_row
from cmbert.scoring import (INPUT_COLUMNS, PARTITION_COLUMNS, CheckpointMismatch, ModelAudio, ScoreStamp,
                            StageOptions, WorkPlan, check_compatible, plan_work)
from schemas import SCORES_SCHEMA


@dataclass
class ScoreConfig:
    """Checkpoint + utterances -> one sentiment score per utterance, incremental and exactly-once."""

    checkpoint: str = field(metadata={"help": "checkpoint folder or s3:// URI (from jobs/train.py)"})
    input: str = field(metadata={"help": "utterances dataset (OUT/utterances from jobs/preprocess.py), local or s3://"})
    output: str = field(metadata={"help": "output folder or s3:// URI: scores go to OUTPUT/scores, runs to OUTPUT/runs"})
    gpu: bool = field(default=False, metadata={"help": "one GPU per actor (num_gpus=1)"})
    batch_size: int = field(default=32, metadata={"help": "utterances per forward pass"})
    precision: str = field(default="fp32", metadata={"choices": ("fp32", "bf16"),
                                                     "help": "bf16 autocast (GPUs); scores differ by ~1e-2"})
    sort_window: int = field(default=16, metadata={"help": "forward passes per Ray batch; rows are sorted by "
                                                           "token length within it so padding is small"})
    actors: int | None = field(default=None, metadata={"help": "scoring actors (default: one per --threads CPUs, or per GPU)"})
    cpus_per_actor: float = field(default=0.5, metadata={"help": "CPU share per CPU actor (fractional: see STACK.md)"})
    threads: int = field(default=1, metadata={"help": "torch threads per CPU actor"})
    score_date: str | None = field(default=None, metadata={"help": "partition date YYYY-MM-DD (default: today, UTC)"})
    flush_rows: int = field(default=100_000, metadata={"help": "score rows per Parquet file"})


class ConfigError(ValueError):
    """A bad option value, reported in one line."""


@dataclass
class Tally:
    n_input: int = 0
    n_skipped: int = 0
    n_todo: int = 0
    n_scored: int = 0
    n_rejected: int = 0
    n_dropped: int = 0  # duplicates of ids already taken (none unless the input repeats an id in one file)
    reasons: dict = field(default_factory=dict)
    first_row_s: float | None = None  # seconds from start to the first scored block
    owned: set = field(default_factory=set, repr=False)  # ids this run has taken

    def line(self) -> str:
        return (f"[score] utterances {self.n_input}  scored {self.n_scored}/{self.n_todo}  "
                f"already scored {self.n_skipped}  rejected {self.n_rejected}")


# ---------------------------------------------------------------- what to score


@dataclass
class ModelInfo:
    checkpoint: str  # the single checkpoint scored with (the best seed of a multi-seed output)
    model_id: str
    model_version: str
    audio: ModelAudio


def read_model_info(checkpoint: str) -> ModelInfo:
    """What scoring needs from a checkpoint, from its meta.json and config.json only (no weights read here)."""
    from cmbert.checkpoint import CONFIG, MULTI_FORMAT, read_meta
    from cmbert.model import CMBertConfig

    meta = read_meta(checkpoint)
    if meta["format"] == MULTI_FORMAT:
        checkpoint = storage.locate(checkpoint).join(meta["best"]).uri
        meta = read_meta(checkpoint)
    loc = storage.locate(checkpoint).join(CONFIG)
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            config = CMBertConfig.from_dict(json.loads(f.read()))
    except OSError as exc:
        raise storage.explain(exc, loc.uri, "read") from None
    return ModelInfo(checkpoint, str(meta.get("model_id") or "cmbert"), str(meta["model_version"]),
                     ModelAudio.from_meta(meta, config))


def utterance_index(uri: str) -> pa.Table:
    """The input's small columns and the file each row is in: enough to plan a run without reading words."""
    loc = storage.locate(uri)
    if not storage.dataset_exists(uri):
        raise storage.StorageError(f"cannot read {uri}: no such dataset")
    cols = ["utterance_id", "audio_present", "feature_set", "feature_dim"]
    try:
        ds = pads.dataset(loc.path, filesystem=loc.fs, format="parquet", partitioning="hive")
        missing = [c for c in cols if c not in ds.schema.names]
        if missing:
            raise storage.StorageError(f"cannot read {uri}: not an utterances dataset (no column {missing[0]!r})")
        parts = []
        for fragment in ds.get_fragments():
            t = fragment.to_table(columns=cols, schema=ds.schema)
            parts.append(t.append_column("file", pa.array([fragment.path] * t.num_rows, pa.string())))
        if not parts:
            return pa.table({c: pa.array([], ds.schema.field(c).type) for c in cols} | {"file": pa.array([], pa.string())})
        return pa.concat_tables(parts)
    except OSError as exc:
        raise storage.explain(exc, uri, "read") from None


def scored_ids(output: str, model_version: str) -> frozenset[str]:
    """Utterance ids this model version has already scored (published files only)."""
    table = storage.read_table(f"{output}/scores", SCORES_SCHEMA, columns=["utterance_id"],
                               filter=pc.field("model_version") == model_version)
    return frozenset(table.column("utterance_id").to_pylist())


def make_plan(cfg: ScoreConfig, info: ModelInfo, done: frozenset[str]) -> WorkPlan:
    index = utterance_index(cfg.input)
    present = index.filter(pc.field("audio_present"))
    pairs = present.group_by(["feature_set", "feature_dim"]).aggregate([]).to_pylist()
    check_compatible(info.audio, [(p["feature_set"], p["feature_dim"]) for p in pairs])
    return plan_work(index.column("utterance_id").to_pylist(), index.column("file").to_pylist(),
                     index.column("audio_present").to_pylist(), index.column("feature_set").to_pylist(),
                     done, info.audio)


# ---------------------------------------------------------------- writing


class StagedWriter:
    """Writes score files under a staging prefix (outside the dataset); ``publish`` moves them all in."""

    def __init__(self, output: str, run_id: str, partition: dict[str, str], flush_rows: int):
        self.final = f"{output}/scores"
        self.staging = storage.new_staging_uri(self.final)
        self.loc = storage.locate(self.staging)
        self.sub = [storage.partition_segment(k, v) for k, v in partition.items()]
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.files = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.n_pending += table.num_rows
        if self.n_pending >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        table = storage.conform(pa.concat_tables(self.pending), SCORES_SCHEMA)
        table = table.drop_columns(list(PARTITION_COLUMNS))  # they live in the folder names (hive style)
        path = posixpath.join(self.loc.path, *self.sub, f"part-{self.run_id}-{self.files:05d}.parquet")
        try:
            self.loc.fs.create_dir(posixpath.dirname(path), recursive=True)
            pq.write_table(table, path, filesystem=self.loc.fs, compression="zstd")
        except OSError as exc:
            raise storage.explain(exc, self.staging, "write") from None
        self.files += 1
        self.pending, self.n_pending = [], 0

    def publish(self) -> list[str]:
        self.flush()
        if not self.files:
            self.discard()
            return []
        return storage.publish_dir(self.staging, self.final)

    def discard(self) -> None:
        storage.remove_quietly(self.loc.fs, self.loc.path)


def collect(block: pa.Table, owned: set[str], writer: StagedWriter, tally: Tally) -> None:
    """Keep one score row per utterance id; count the rows the model could not score.

    ``owned`` starts as the ids scored by earlier runs, so nothing already published is written again."""
    errors = block.column("error")
    failed = block.filter(errors.is_valid())
    for reason in failed.column("error").to_pylist():
        tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
    tally.n_rejected += failed.num_rows
    ok = block.filter(errors.is_null()).drop_columns(["error"])
    ids = ok.column("utterance_id").to_pylist()
    keep = [i for i, u in enumerate(ids) if u not in owned and not owned.add(u)]
    if len(keep) < ok.num_rows:
        tally.n_dropped += ok.num_rows - len(keep)
        ok = ok.take(pa.array(keep, pa.int64()))  # typed: an empty list would infer null
    tally.n_scored += ok.num_rows
    writer.add(ok)


# ---------------------------------------------------------------- the run


def run(cfg: ScoreConfig) -> Tally:
    from cmbert.checkpoint import verify_checkpoint

    started = utc_now()
    t0 = time.monotonic()
    run_id = new_run_id("score")
    score_date = parse_date(cfg.score_date) if cfg.score_date else started.date().isoformat()
    info = read_model_info(cfg.checkpoint)
    verify_checkpoint(info.checkpoint)  # damaged weights: one clear error now, not a crash in every actor
    done = scored_ids(cfg.output, info.model_version)
    plan = make_plan(cfg, info, done)
    tally = Tally(n_input=plan.n_input, n_skipped=plan.n_skipped, n_todo=plan.n_todo,
                  n_rejected=plan.n_unscorable, owned=set(done))
    if plan.n_unscorable:
        tally.reasons[plan.unscorable_reason] = plan.n_unscorable
    print(f"[score] model {info.model_id} version {info.model_version}: {plan.n_todo} to score, "
          f"{plan.n_skipped} already scored, in {len(plan.files)} file(s)", flush=True)
    writer = StagedWriter(cfg.output, run_id, {"score_date": score_date, "model_version": info.model_version},
                          cfg.flush_rows)
    try:
        if plan.n_todo:
            stamp = ScoreStamp(info.model_id, info.model_version, run_id, score_date)
            batches = iter(score_dataset(cfg, info, plan, stamp).iter_batches(batch_format="pyarrow", batch_size=None))
            with contextlib.closing(batches):  # on failure too: shuts the executor down and frees the actors now
                for block in batches:
                    if tally.first_row_s is None:
                        tally.first_row_s = time.monotonic() - t0
                    collect(block, tally.owned, writer, tally)
        writer.publish()
    except BaseException:
        writer.discard()
        record_run(cfg, run_id, started, tally, info.model_version, "failed")
        raise
    record_run(cfg, run_id, started, tally, info.model_version, "succeeded")
    return tally


def score_dataset(cfg: ScoreConfig, info: ModelInfo, plan: WorkPlan, stamp: ScoreStamp):
    """The Ray Data pipeline: read the planned files, score them in an actor pool."""
    import ray

    from cmbert.raysetup import init_ray
    from cmbert.scoring import ScoreStage

    init_ray()
    src = storage.locate(cfg.input)
    ckpt = storage.locate(info.checkpoint)
    options = StageOptions(
        checkpoint=info.checkpoint, stamp=stamp,
        checkpoint_fs=ckpt.fs if ckpt.is_s3 else None, checkpoint_path=ckpt.path,
        partial=plan.partial, device="cuda" if cfg.gpu else "cpu", batch_size=cfg.batch_size,
        torch_threads=cfg.threads, precision=cfg.precision,
    )
    rows_per_batch = cfg.batch_size * cfg.sort_window
    batches = max(1, math.ceil(plan.n_todo / rows_per_batch))
    if cfg.gpu:
        resources = {"num_gpus": 1}
        default = int(ray.cluster_resources().get("GPU", 1))
    else:
        resources = {"num_cpus": cfg.cpus_per_actor}  # fractional: 2 actors on 2 CPUs do not deadlock the read
        # One actor per `threads` cores. Not CPUs / cpus_per_actor: that was 4 single-thread actors on 2 cores,
        # twice the threads the cores can run.
        default = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cfg.threads, 1)))
    actors = max(1, min(cfg.actors or default, batches))
    # A block goes to one actor whole: give every actor at least two blocks' worth of rows to work on.
    rows_per_batch = min(rows_per_batch, max(cfg.batch_size, math.ceil(plan.n_todo / (2 * actors))))
    ds = ray.data.read_parquet(plan.files, filesystem=src.fs, include_paths=bool(plan.partial), partitioning=None)
    ds = ds.select_columns(INPUT_COLUMNS + (["path"] if plan.partial else []))  # pushed down into the read
    if faults.worker_env():  # tests only (cmbert/faults.py)
        resources["runtime_env"] = {"env_vars": faults.worker_env()}
    # A block goes to one actor whole, and a read task may merge several small files into one block: cut the
    # stream into blocks of one actor batch (streaming, no barrier), so every actor gets work from the start.
    ds = ds.repartition(target_num_rows_per_block=rows_per_batch)
    return ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={"options": options},
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        # All actors start at once (an autoscaling pool starting from 1 left a core idle for its first ~20 s), but
        # the job runs with fewer when a busy cluster cannot place them all (a fixed-size pool would wait).
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        **resources,
    )


def parse_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ConfigError(f"--score-date {text!r} is not a date YYYY-MM-DD") from None


def record_run(cfg: ScoreConfig, run_id: str, started, tally: Tally, model_version: str | None,
               status: str) -> None:
    try:
        write_run_row(cfg.output, job="score", status=status, run_id=run_id, started=started, config=cfg,
                      input=cfg.input, n_input=tally.n_input,
                      n_output=tally.n_scored if status == "succeeded" else 0, n_rejected=tally.n_rejected,
                      n_skipped=tally.n_skipped, model_version=model_version)
    except storage.StorageError as exc:
        if status == "succeeded":
            raise
        print(f"[score] could not record the failed run: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from cmbert.checkpoint import CheckpointError

    cfg = parse_config(ScoreConfig, argv)
    try:
        tally = run(cfg)
    except (ConfigError, CheckpointError, CheckpointMismatch, storage.StorageError,
            storage.SchemaMismatchError) as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 2
    print(tally.line())
    for reason, n in sorted(tally.reasons.items(), key=lambda kv: -kv[1]):
        print(f"[score]   not scored ({n}): {reason}")
    print(f"[score] scores: {cfg.output}/scores  runs: {cfg.output}/runs")
    return 0


if __name__ == "__main__":
    from cmbert.console import quiet_console

    quiet_console()
    sys.exit(main())
