"""Score: checkpoint + utterances -> one sentiment score per utterance (Ray Data batch inference).

    python jobs/score.py --checkpoint DIR_OR_S3_URI --input UTTERANCES_URI --output DIR_OR_S3_URI \
        [--gpu] [--batch-size N] [--actors N] [--score-date YYYY-MM-DD]

Writes OUTPUT/scores/score_date=.../model_version=.../*.parquet (schemas.SCORES_SCHEMA) and one row in
OUTPUT/runs/. Incremental and exactly-once: a run scores only the utterances this model version has not
scored yet; its files are written under a staging prefix and published together at the end, so a run that
dies publishes nothing and the next run does its work; a rerun adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

try:
    from jobs import _wiring
except ImportError:  # python jobs/score.py: jobs/ is on sys.path, the repo root may not be
    import _wiring

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq

from cmbert import faults, incremental, storage
from cmbert.errors import ConfigError
from cmbert.incremental import Tally
from cmbert.runinfo import new_run_id, utc_now
from cmbert.scoring import NO_AUDIO, CheckpointMismatch, ModelAudio, ScoreStamp, StageOptions, check_compatible
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
    flush_rows: int = field(default=100_000, metadata={"help": "at most this many score rows per Parquet file"})
    files_per_batch: int = field(default=1, metadata={"help": "input files per worker batch (and per score file)"})


def line(tally: Tally) -> str:
    todo = tally.processed - tally.excluded
    return (f"[score] utterances {tally.items}  scored {tally.output_rows}/{todo}  "
            f"already scored {tally.skipped}  rejected {tally.rejected}")


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


INDEX_COLUMNS = ["utterance_id", "audio_present", "feature_set", "feature_dim"]


def feature_sets(uri: str, files: list[str]) -> set[tuple[str, int]]:
    """(feature set, dimension) of the input's utterances with audio, from each row group's column statistics
    (one footer read per file); a row group that mixes values is read for those columns only."""
    if not files:
        raise storage.StorageError(f"cannot read {uri}: no such dataset")
    fs = storage.locate(uri).fs
    out: set[tuple[str, int]] = set()
    try:
        for path in files:
            pf = pq.ParquetFile(path, filesystem=fs)
            names = pf.schema_arrow.names
            missing = [c for c in INDEX_COLUMNS if c not in names]
            if missing:
                raise storage.StorageError(f"cannot read {uri}: not an utterances dataset (no column {missing[0]!r})")
            cols = {name: i for i, name in enumerate(names)}
            for rg in range(pf.metadata.num_row_groups):
                group = pf.metadata.row_group(rg)
                stats = [group.column(cols[c]).statistics for c in ("feature_set", "feature_dim")]
                if all(st is not None and st.has_min_max and st.min == st.max for st in stats):
                    if stats[0].min != NO_AUDIO:
                        out.add((stats[0].min, int(stats[1].min)))
                    continue
                t = pf.read_row_group(rg, columns=["audio_present", "feature_set", "feature_dim"])
                t = t.filter(t.column("audio_present"))
                out |= set(zip(t.column("feature_set").to_pylist(), t.column("feature_dim").to_pylist()))
    except OSError as exc:
        raise storage.explain(exc, uri, "read") from None
    return out


def index_dataset(uri: str, files: list[str]):
    """The input's small columns and the file of each row, as a Ray dataset (the words are not read)."""
    import ray

    src = storage.locate(uri)
    cols = INDEX_COLUMNS
    return ray.data.read_parquet(files, filesystem=src.fs, columns=cols, include_paths=True, partitioning=None,
                                 num_cpus=incremental.PLAN_CPUS,
                                 override_num_blocks=min(len(files), 200)), len(files)


INDEX_SCHEMA = pa.schema([("utterance_id", pa.string()), ("audio_present", pa.bool_()), ("feature_set", pa.string()),
                          ("feature_dim", pa.int32()), ("path", pa.string())])


def done_keys(output: str, model_version: str):
    """Utterance ids this model version has already scored (published files only), as a Ray dataset."""
    segment = storage.partition_segment("model_version", model_version)
    loc = storage.locate(f"{output}/scores")
    files = [f for f in storage.list_files(f"{output}/scores") if f"/{segment}/" in f[len(loc.path):] + "/"]
    if not files:
        return None
    import ray

    return ray.data.read_parquet(files, filesystem=loc.fs, columns=["utterance_id"], partitioning=None,
                                 num_cpus=incremental.PLAN_CPUS,
                                 override_num_blocks=min(len(files), 200))


# ---------------------------------------------------------------- the run


def run(cfg: ScoreConfig) -> Tally:
    from cmbert.checkpoint import verify_checkpoint
    from cmbert.raysetup import init_ray

    started = utc_now()
    run_id = new_run_id("score")
    score_date = parse_date(cfg.score_date) if cfg.score_date else started.date().isoformat()
    info = read_model_info(cfg.checkpoint)
    verify_checkpoint(info.checkpoint)  # damaged weights: one clear error now, not a crash in every actor
    if not storage.dataset_exists(cfg.input):
        raise storage.StorageError(f"cannot read {cfg.input}: no such dataset")
    files = storage.list_files(cfg.input)
    check_compatible(info.audio, sorted(feature_sets(cfg.input, files)))  # from Parquet footers: before any work
    init_ray()
    storage.require_shared(cfg.output)  # before any work: a cluster's nodes must all see a local output path
    index, n_files = index_dataset(cfg.input, files)
    partition = (storage.partition_segment("score_date", score_date),
                 storage.partition_segment("model_version", info.model_version))
    scores = incremental.StagedFiles.for_run("scores", f"{cfg.output}/scores", SCORES_SCHEMA, run_id)
    publisher = incremental.Publisher([scores], "scores", defer=True)  # published together at the end
    print(f"[score] model {info.model_id} version {info.model_version}: input {cfg.input} in {n_files} file(s)",
          flush=True)
    try:
        stamp = ScoreStamp(info.model_id, info.model_version, run_id, score_date)
        plan = incremental.pending(index, done_keys(cfg.output, info.model_version), "utterance_id", "path",
                                   INDEX_SCHEMA, partitions=max(1, min(n_files, 200)), keep_done=True)
        # Planned before the actor pool starts (a group by is a barrier anyway): on a small cluster the pool's
        # actors would otherwise hold the CPUs the shuffle's tasks wait for. The plan stays in the object store.
        files = incremental.by_file(plan, "utterance_id", "path", partitions=max(1, min(n_files, 200))).materialize()
        incremental.drain(score_dataset(cfg, info, files, stamp, partition, scores), publisher)
        publisher.commit()
    except BaseException as exc:
        publisher.discard()
        publisher.tally.items = publisher.tally.processed + publisher.tally.skipped
        record_run(cfg, run_id, started, publisher.tally, info.model_version, "failed")
        err = incremental.user_error(exc)
        if err is not exc:
            raise err from None
        raise
    tally = publisher.tally
    tally.items = tally.processed + tally.skipped  # distinct utterance ids in the input
    record_run(cfg, run_id, started, tally, info.model_version, "succeeded")
    return tally


def score_dataset(cfg: ScoreConfig, info: ModelInfo, files, stamp: ScoreStamp, partition, scores):
    """The Ray Data pipeline: input files with the ids to score in each -> actors that read, score and write."""
    import ray

    from cmbert.stages import ScoreWriter

    src = storage.locate(cfg.input)
    ckpt = storage.locate(info.checkpoint)
    options = StageOptions(
        checkpoint=info.checkpoint, stamp=stamp,
        checkpoint_fs=ckpt.fs if ckpt.is_s3 else None, checkpoint_path=ckpt.path,
        device="cuda" if cfg.gpu else "cpu", batch_size=cfg.batch_size,
        torch_threads=cfg.threads, precision=cfg.precision,
    )
    if cfg.gpu:
        resources = {"num_gpus": 1}
        default = int(ray.cluster_resources().get("GPU", 1))
    else:
        resources = {"num_cpus": cfg.cpus_per_actor}  # fractional: 2 actors on 2 CPUs do not deadlock the read
        # One actor per `threads` cores. Not CPUs / cpus_per_actor: that was 4 single-thread actors on 2 cores,
        # twice the threads the cores can run.
        default = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cfg.threads, 1)))
    actors = max(1, cfg.actors or default)
    if faults.worker_env():  # tests only (cmbert/faults.py)
        resources["runtime_env"] = {"env_vars": faults.worker_env()}
    return files.map_batches(
        ScoreWriter,
        fn_constructor_kwargs={"options": options, "input_fs": src.fs, "scores": scores, "partition": partition,
                               "rows_per_pass": cfg.batch_size * cfg.sort_window, "flush_rows": cfg.flush_rows},
        batch_size=cfg.files_per_batch,
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
    incremental.record_run(cfg.output, "score", status, run_id=run_id, started=started, config=cfg, input=cfg.input,
                           tally=tally, model_version=model_version)


def report(cfg: ScoreConfig, tally: Tally) -> None:
    print(line(tally))
    for reason, n in sorted(tally.reasons.items(), key=lambda kv: -kv[1]):
        print(f"[score]   not scored ({n}): {reason}")
    print(f"[score] scores: {cfg.output}/scores  runs: {cfg.output}/runs")


def main(argv: list[str] | None = None) -> int:
    return _wiring.run_job("score", ScoreConfig, run, report, argv)


if __name__ == "__main__":
    _wiring.exit_with(main)
