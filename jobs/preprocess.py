"""Preprocess: raw clips (and/or manifest rows) -> utterances with speakers, timed words, word features.

    python jobs/preprocess.py [--input DIR_OR_S3_PREFIX] --output DIR_OR_S3_URI [--manifest FILE] ...

Writes OUTPUT/utterances/, OUTPUT/rejects/ and OUTPUT/runs/ (Parquet, schemas in schemas/). Reruns skip
work already done (by content-hash task id), so they add no duplicates and pick up only new clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

try:
    from jobs import _wiring
except ImportError:  # python jobs/preprocess.py: jobs/ is on sys.path, the repo root may not be
    import _wiring

from cmbert import incremental, storage
from cmbert.audio.features import BACKENDS
from cmbert.inputs import build_tasks, read_manifest
from cmbert.pipeline import DIARIZERS, WORD_MODES, ClipParams
from cmbert.incremental import Tally
from cmbert.runinfo import code_version, config_json, new_run_id, utc_now
from cmbert.stages import ClipWriter, done_keys, identify_tasks, task_table
from schemas import CLIP_TASK_SCHEMA, REJECTS_SCHEMA, UTTERANCES_SCHEMA

CLIP = ClipParams()  # the defaults of the clip options: the fields below named as ClipParams fields are those
# The default batch: every worker gets BATCHES_PER_WORKER batches or more (the last ones finish together), and a
# big run gets big batches: the driver spends ~5 ms of CPU per batch (bench/profile_driver.py pool), 2.4% of the
# workers' CPU for a batch of 4 short clips (RAVDESS: ~0.05 worker CPU-s each, bench_driver.py), 0.15% for 64.
BATCHES_PER_WORKER, MIN_CLIPS_PER_BATCH, MAX_CLIPS_PER_BATCH = 4, 4, 64


@dataclass
class PreprocessConfig:
    """Clips -> utterances with speakers, timed words and word-level audio features."""

    output: str = field(metadata={"help": "output folder or s3:// URI"})
    input: str | None = field(default=None, metadata={"help": "folder or s3:// prefix of media files"})
    manifest: str | None = field(default=None, metadata={"help": "CSV/TSV/Parquet: file, text, label, start, end, ..."})
    text_column: str = field(default="text", metadata={"help": "manifest column with the transcript"})
    label_column: str = field(default="label", metadata={"help": "manifest column with the label"})
    diarizer: str = field(default=CLIP.diarizer, metadata={"choices": DIARIZERS,
                                                           "help": "speaker diarization backend"})
    diarizer_model: str | None = field(default=CLIP.diarizer_model,
                                       metadata={"help": "pyannote pipeline path or hub id"})
    num_speakers: int | None = field(default=CLIP.num_speakers,
                                     metadata={"help": "fix the speaker count (default: automatic)"})
    words: str = field(default=CLIP.words, metadata={"choices": WORD_MODES,
                                                     "help": "align a known transcript, or ASR"})
    asr_model: str | None = field(default=CLIP.asr_model,
                                  metadata={"help": "faster-whisper size or path (default: bundled tiny.en)"})
    features: str = field(default=CLIP.features, metadata={"choices": BACKENDS, "help": "word-level acoustic "
                          "features: whisper encoder states (MIT), or egemaps (the paper's; openSMILE, non-commercial)"})
    feature_model: str | None = field(default=CLIP.feature_model, metadata={
        "help": "whisper features: a CTranslate2 whisper directory (default: bundled tiny.en)"})
    max_clip_seconds: float = field(default=CLIP.max_clip_seconds, metadata={"help": "longer clips are rejected"})
    actors: int | None = field(default=None, metadata={"help": "clip workers (default: one per CPU / GPU)"})
    gpu: bool = field(default=CLIP.gpu, metadata={"help": "give each worker a GPU (ASR, speaker embeddings)"})
    clips_per_batch: int | None = field(default=None, metadata={
        "help": "clips per worker batch and per published file (a slow clip holds at most this many; default: "
                f"the clips / ({BATCHES_PER_WORKER} x workers), {MIN_CLIPS_PER_BATCH} to {MAX_CLIPS_PER_BATCH})"})
    retry_rejects: bool = field(default=False, metadata={"help": "process again the tasks earlier runs rejected"})


def line(tally: Tally) -> str:
    return (f"[preprocess] clips {tally.processed + tally.skipped}/{tally.items}  utterances {tally.output_rows}  "
            f"rejects {tally.rejected}  skipped {tally.skipped}  audio {tally.audio_seconds / 3600:.3f} h")


def run(cfg: PreprocessConfig) -> Tally:
    run_id = new_run_id("preprocess")
    started = utc_now()
    storage.check_written_version(f"{cfg.output}/utterances", UTTERANCES_SCHEMA)  # other ids: a rerun would duplicate
    storage.check_written_version(f"{cfg.output}/rejects", REJECTS_SCHEMA)  # (before Ray starts: one line, no work)
    manifest = read_manifest(cfg.manifest) if cfg.manifest else None
    tasks, early = build_tasks(cfg.input, manifest, cfg.text_column, cfg.label_column)
    metadata = {"cmbert.run_id": run_id, "cmbert.code_version": code_version(), "cmbert.config": config_json(cfg)}
    targets = [incremental.StagedFiles.for_run(name, f"{cfg.output}/{name}", schema, run_id, metadata)
               for name, schema in (("utterances", UTTERANCES_SCHEMA), ("rejects", REJECTS_SCHEMA))]
    publisher = incremental.Publisher(targets, "utterances", defer=False)  # whole tasks, published as they come
    publisher.tally.items = len(tasks) + len(early)
    try:
        if tasks or early:
            incremental.drain(pipeline(cfg, tasks, early, targets, run_id, started), publisher, line)
        publisher.commit()
    except BaseException as exc:
        publisher.discard()
        publisher.tally.skipped = max(0, publisher.tally.items - publisher.tally.processed)
        incremental.record_run(cfg.output, "preprocess", "failed", run_id=run_id, started=started, config=cfg,
                               input=cfg.input or cfg.manifest or "", tally=publisher.tally)
        err = incremental.user_error(exc)
        if err is not exc:
            raise err from None
        raise
    tally = publisher.tally
    tally.skipped = tally.items - tally.processed  # done earlier, or a second task with the same id
    incremental.record_run(cfg.output, "preprocess", "succeeded", run_id=run_id, started=started, config=cfg,
                           input=cfg.input or cfg.manifest or "", tally=tally)
    return tally


def pipeline(cfg: PreprocessConfig, tasks: list, early: list, targets, run_id: str, started):
    """The Ray Data plan: name every task by its content, drop those done (a distributed group by task id against
    the output's task ids), process the rest in an actor pool whose workers write their own files."""
    import ray

    from cmbert.raysetup import init_ray, worker_runtime_env

    init_ray()
    storage.require_shared(cfg.output)  # before any work: a cluster's nodes must all see a local output path
    pool = _wiring.actor_pool(gpu=cfg.gpu, actors=cfg.actors, env_vars=worker_runtime_env().get("env_vars"))
    env = {"runtime_env": pool["runtime_env"]} if "runtime_env" in pool else {}
    source = storage.locate(cfg.input) if cfg.input else None  # workers read through the driver's filesystem
    plan = task_table(tasks, early)
    per_batch = clips_per_batch(cfg, plan.num_rows, pool["compute"].max_size)
    blocks = max(1, min(plan.num_rows // per_batch, 200))
    step = -(-plan.num_rows // blocks)  # ceil: `blocks` blocks
    named = ray.data.from_arrow([plan.slice(i, step) for i in range(0, plan.num_rows, step)]).map_batches(
        identify_tasks, fn_kwargs={"input": source}, batch_format="pyarrow", batch_size=None,
        num_cpus=incremental.PLAN_CPUS, **env)
    # Planned before the actor pool starts (a group by is a barrier anyway): on a small cluster the pool's actors
    # would otherwise hold the CPUs the shuffle's tasks wait for. The plan stays in the object store.
    todo = incremental.pending(named, done_keys(cfg.output, cfg.retry_rejects), "task_id", "order", CLIP_TASK_SCHEMA,
                               partitions=blocks).materialize()
    utterances, rejects = targets
    return todo.map_batches(
        ClipWriter, batch_size=per_batch, batch_format="pyarrow", **pool,
        fn_constructor_kwargs={"stage_kwargs": {"input": source, "params": ClipParams.from_config(cfg),
                                                "run_id": run_id, "created_at": started},
                               "utterances": utterances, "rejects": rejects})


def clips_per_batch(cfg: PreprocessConfig, clips: int, workers: int) -> int:
    if cfg.clips_per_batch:
        return max(cfg.clips_per_batch, 1)
    return max(MIN_CLIPS_PER_BATCH, min(MAX_CLIPS_PER_BATCH, clips // (BATCHES_PER_WORKER * max(workers, 1))))


def report(cfg: PreprocessConfig, tally: Tally) -> None:
    print(line(tally))
    print(f"[preprocess] utterances: {cfg.output}/utterances  rejects: {cfg.output}/rejects  runs: {cfg.output}/runs")


def main(argv: list[str] | None = None) -> int:
    return _wiring.run_job("preprocess", PreprocessConfig, run, report, argv)


if __name__ == "__main__":
    _wiring.exit_with(main)
