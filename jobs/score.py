"""Score: checkpoint + utterances -> one sentiment score per utterance (Ray Data batch inference).

    python jobs/score.py --checkpoint DIR_OR_S3_URI --input UTTERANCES_URI --output DIR_OR_S3_URI \
        [--gpu] [--batch-size N] [--actors N] [--score-date YYYY-MM-DD]

Writes OUTPUT/scores/score_date=.../model_version=.../*.parquet (schemas.SCORES_SCHEMA) and one row in
OUTPUT/runs/. Incremental and exactly-once: a run scores only the utterances this model version has not
scored yet; its files are written under a staging prefix and published together at the end, so a run that
dies publishes nothing and the next run does its work; a rerun adds nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

try:
    from jobs import _wiring
except ImportError:  # python jobs/score.py: jobs/ is on sys.path, the repo root may not be
    import _wiring

from cmbert import incremental, storage
from cmbert.checkpoint import ModelInfo, read_model_info, verify_checkpoint
from cmbert.errors import ConfigError
from cmbert.incremental import Tally
from cmbert.raysetup import init_ray
from cmbert.runinfo import new_run_id, utc_now
from cmbert.scoring import (INDEX_SCHEMA, ScoreStamp, StageOptions, check_compatible, done_keys, feature_sets,
                            index_dataset)
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
    # utterances so far: at the end, the input's distinct ids (``run`` sets ``items`` to the same sum)
    return (f"[score] utterances {tally.processed + tally.skipped}  scored {tally.output_rows}/{todo}  "
            f"already scored {tally.skipped}  rejected {tally.rejected}")


# ---------------------------------------------------------------- the run


def run(cfg: ScoreConfig) -> Tally:
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
    blocks = max(1, min(len(files), 200))
    partition = (storage.partition_segment("score_date", score_date),
                 storage.partition_segment("model_version", info.model_version))
    scores = incremental.StagedFiles.for_run("scores", f"{cfg.output}/scores", SCORES_SCHEMA, run_id)
    publisher = incremental.Publisher([scores], "scores", defer=True)  # published together at the end
    print(f"[score] model {info.model_id} version {info.model_version}: input {cfg.input} in {len(files)} file(s)",
          flush=True)
    try:
        stamp = ScoreStamp(info.model_id, info.model_version, run_id, score_date)
        done = done_keys(f"{cfg.output}/scores", info.model_version)
        plan = incremental.pending(index_dataset(cfg.input, files), done, "utterance_id", "path", INDEX_SCHEMA,
                                   partitions=blocks, keep_done=True)
        # Planned before the actor pool starts (a group by is a barrier anyway): on a small cluster the pool's
        # actors would otherwise hold the CPUs the shuffle's tasks wait for. The plan stays in the object store.
        todo = incremental.by_file(plan, "utterance_id", "path", partitions=blocks).materialize()
        incremental.drain(score_dataset(cfg, info, todo, stamp, partition, scores), publisher, line)
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
    from cmbert.stages import ScoreWriter

    src = storage.locate(cfg.input)
    ckpt = storage.locate(info.checkpoint)
    options = StageOptions(
        checkpoint=info.checkpoint, stamp=stamp, location=ckpt if ckpt.is_s3 else None,
        device="cuda" if cfg.gpu else "cpu", batch_size=cfg.batch_size,
        torch_threads=cfg.threads, precision=cfg.precision,
    )
    return files.map_batches(
        ScoreWriter,
        fn_constructor_kwargs={"options": options, "input_fs": src.fs, "scores": scores, "partition": partition,
                               "rows_per_pass": cfg.batch_size * cfg.sort_window, "flush_rows": cfg.flush_rows},
        batch_size=cfg.files_per_batch,
        batch_format="pyarrow",
        **_wiring.actor_pool(gpu=cfg.gpu, actors=cfg.actors, cpus_per_actor=cfg.cpus_per_actor, threads=cfg.threads),
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
