"""Preprocess: raw clips (and/or manifest rows) -> utterances with speakers, timed words, word features.

    python jobs/preprocess.py [--input DIR_OR_S3_PREFIX] --output DIR_OR_S3_URI [--manifest FILE] ...

Writes OUTPUT/utterances/, OUTPUT/rejects/ and OUTPUT/runs/ (Parquet, schemas in schemas/). Reruns skip
work already done (by content-hash task id), so they add no duplicates and pick up only new clips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

try:
    from jobs import _wiring
except ImportError:  # python jobs/preprocess.py: jobs/ is on sys.path, the repo root may not be
    import _wiring

import pyarrow as pa
import pyarrow.compute as pc

from cmbert import faults, incremental, storage
from cmbert.audio.features import BACKENDS, DEFAULT_BACKEND
from cmbert.inputs import build_tasks, read_manifest
from cmbert.pipeline import DIARIZERS, WORD_MODES, ClipParams
from cmbert.incremental import Tally
from cmbert.runinfo import code_version, config_json, new_run_id, utc_now
from schemas import REJECTS_SCHEMA, UTTERANCES_SCHEMA


@dataclass
class PreprocessConfig:
    """Clips -> utterances with speakers, timed words and word-level audio features."""

    output: str = field(metadata={"help": "output folder or s3:// URI"})
    input: str | None = field(default=None, metadata={"help": "folder or s3:// prefix of media files"})
    manifest: str | None = field(default=None, metadata={"help": "CSV/TSV/Parquet: file, text, label, start, end, ..."})
    text_column: str = field(default="text", metadata={"help": "manifest column with the transcript"})
    label_column: str = field(default="label", metadata={"help": "manifest column with the label"})
    diarizer: str = field(default="auto", metadata={"choices": DIARIZERS, "help": "speaker diarization backend"})
    diarizer_model: str | None = field(default=None, metadata={"help": "pyannote pipeline path or hub id"})
    num_speakers: int | None = field(default=None, metadata={"help": "fix the speaker count (default: automatic)"})
    words: str = field(default="auto", metadata={"choices": WORD_MODES, "help": "align a known transcript, or ASR"})
    asr_model: str | None = field(default=None, metadata={"help": "faster-whisper size or path (default: bundled tiny.en)"})
    features: str = field(default=DEFAULT_BACKEND, metadata={"choices": BACKENDS, "help": "word-level acoustic "
                          "features: whisper encoder states (MIT), or egemaps (the paper's; openSMILE, non-commercial)"})
    feature_model: str | None = field(default=None, metadata={"help": "whisper features: a CTranslate2 whisper "
                                                                      "directory (default: bundled tiny.en)"})
    max_clip_seconds: float = field(default=3 * 3600.0, metadata={"help": "longer clips are rejected"})
    actors: int | None = field(default=None, metadata={"help": "clip workers (default: one per CPU / GPU)"})
    gpu: bool = field(default=False, metadata={"help": "give each worker a GPU (ASR, speaker embeddings)"})
    clips_per_batch: int = field(default=4, metadata={"help": "clips per worker batch and per published file "
                                                                "(a slow clip holds at most this many)"})
    retry_rejects: bool = field(default=False, metadata={"help": "process again the tasks earlier runs rejected"})


def line(tally: Tally) -> str:
    return (f"[preprocess] clips {tally.processed + tally.skipped}/{tally.items}  utterances {tally.output_rows}  "
            f"rejects {tally.rejected}  skipped {tally.skipped}  audio {tally.audio_seconds / 3600:.3f} h")


def done_keys(output: str, retry_rejects: bool = False):
    """Task ids an earlier run finished, as a Ray dataset of ``task_id`` (None when there are none): those with
    utterances, and (unless retried) those with a final reject row. A file that could not be read (stage ``io``:
    storage down, access denied) is not final: it is tried again. The rejects table is a log of attempts: a
    retried task that now succeeds keeps its old reject rows."""
    from cmbert.stages import RETRIED_STAGE

    def final(t: pa.Table):
        return pc.not_equal(t.column("stage"), RETRIED_STAGE)

    final.columns = ("stage",)
    parts = [incremental.read_keys(f"{output}/utterances", "task_id", UTTERANCES_SCHEMA)]
    if not retry_rejects:
        parts.append(incremental.read_keys(f"{output}/rejects", "task_id", REJECTS_SCHEMA, keep=final))
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


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
            incremental.drain(pipeline(cfg, tasks, early, targets, run_id, started), publisher, progress)
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


_last_print = [0.0]


def progress(tally: Tally) -> None:
    now = time.monotonic()
    if now - _last_print[0] > 5:
        print(line(tally), flush=True)
        _last_print[0] = now


def pipeline(cfg: PreprocessConfig, tasks: list[dict], early: list, targets, run_id: str, started):
    """The Ray Data plan: name every task by its content, drop those done (a distributed group by task id against
    the output's task ids), process the rest in an actor pool whose workers write their own files."""
    import ray

    from cmbert.raysetup import cluster_cpus, init_ray, worker_runtime_env
    from cmbert.stages import TASK_SCHEMA, ClipWriter, ModelChoice, identify_tasks, tasks_for_ray

    init_ray()
    storage.require_shared(cfg.output)  # before any work: a cluster's nodes must all see a local output path
    params = ClipParams(diarizer=cfg.diarizer, words=cfg.words, max_clip_seconds=cfg.max_clip_seconds,
                        num_speakers=cfg.num_speakers)
    choice = ModelChoice(features=cfg.features, feature_model=cfg.feature_model, asr_model=cfg.asr_model,
                         diarizer_model=cfg.diarizer_model, device="cuda" if cfg.gpu else "cpu")
    actors = cfg.actors or max(1, int(cluster_cpus()))
    resources = {"num_gpus": 1} if cfg.gpu else {"num_cpus": 0.5}  # fractional: 2 actors on 2 CPUs, no deadlock
    # Never credentials in a runtime_env: Ray logs its env_vars (runtime_env_agent.log) and shows them in the
    # dashboard. Workers read the input and write the output through the filesystems passed to them.
    env_vars = worker_runtime_env().get("env_vars", {})  # never credentials (cmbert/raysetup.py)
    env_vars |= faults.worker_env()  # tests only
    if env_vars:
        resources["runtime_env"] = {"env_vars": env_vars}
    ray.data.DataContext.get_current().enable_progress_bars = False  # we print our own progress line
    input_fs = storage.locate(cfg.input).fs if cfg.input and storage.is_s3(cfg.input) else None
    rows = tasks_for_ray(tasks, early)
    blocks = max(1, min(len(rows) // max(cfg.clips_per_batch, 1), 200))
    named = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        identify_tasks, fn_kwargs={"input_uri": cfg.input, "input_fs": input_fs}, batch_format="pyarrow",
        batch_size=None, num_cpus=incremental.PLAN_CPUS, **({"runtime_env": resources["runtime_env"]} if env_vars else {}))
    # Planned before the actor pool starts (a group by is a barrier anyway): on a small cluster the pool's actors
    # would otherwise hold the CPUs the shuffle's tasks wait for. The plan stays in the object store.
    todo = incremental.pending(named, done_keys(cfg.output, cfg.retry_rejects), "task_id", "order", TASK_SCHEMA,
                               partitions=blocks).materialize()
    utterances, rejects = targets
    return todo.map_batches(
        ClipWriter,
        fn_constructor_kwargs={"stage_kwargs": {"input_uri": cfg.input, "params": params, "models": choice,
                                                "run_id": run_id, "created_at": started, "input_fs": input_fs},
                               "utterances": utterances, "rejects": rejects},
        batch_size=cfg.clips_per_batch,
        batch_format="pyarrow",
        # All actors start at once (an autoscaling pool starting from 1 left a core idle for its first ~20 s), but
        # the job runs with fewer when a busy cluster cannot place them all (a fixed-size pool would wait).
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        **resources,
    )


def report(cfg: PreprocessConfig, tally: Tally) -> None:
    print(line(tally))
    print(f"[preprocess] utterances: {cfg.output}/utterances  rejects: {cfg.output}/rejects  runs: {cfg.output}/runs")


def main(argv: list[str] | None = None) -> int:
    return _wiring.run_job("preprocess", PreprocessConfig, run, report, argv)


if __name__ == "__main__":
    _wiring.exit_with(main)
