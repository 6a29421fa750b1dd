"""Preprocess: raw clips (and/or manifest rows) -> utterances with speakers, timed words, word features.

    python jobs/preprocess.py [--input DIR_OR_S3_PREFIX] --output DIR_OR_S3_URI [--manifest FILE] ...

Writes OUTPUT/utterances/, OUTPUT/rejects/ and OUTPUT/runs/ (Parquet, schemas in schemas/). Reruns skip
work already done (by content-hash task id), so they add no duplicates and pick up only new clips.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

try:
    import cmbert  # noqa: F401
except ImportError:  # run from a Ray working dir without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa

from cmbert import faults, storage
from cmbert.audio.features import BACKENDS, DEFAULT_BACKEND
from cmbert.cli import parse_config
from cmbert.inputs import ManifestError, build_tasks, read_manifest
from cmbert.pipeline import DIARIZERS, WORD_MODES, ClipParams
from cmbert.runinfo import code_version, config_json, new_run_id, utc_now, write_run_row
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
    flush_rows: int = field(default=2000, metadata={"help": "utterances per published Parquet file"})
    retry_rejects: bool = field(default=False, metadata={"help": "process again the tasks earlier runs rejected"})


@dataclass
class Tally:
    tasks: int = 0
    done: int = 0
    utterances: int = 0
    rejects: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    last_print: float = 0.0

    def line(self) -> str:
        return (f"[preprocess] clips {self.done}/{self.tasks}  utterances {self.utterances}  "
                f"rejects {self.rejects}  skipped {self.skipped}  audio {self.audio_seconds / 3600:.3f} h")


class Publisher:
    """Buffers complete tasks' rows and publishes them as Parquet files (each file: whole tasks only)."""

    def __init__(self, cfg: PreprocessConfig, metadata: dict):
        self.cfg = cfg
        self.metadata = metadata
        self.utterances: list[pa.RecordBatch] = []
        self.rejects: list[pa.RecordBatch] = []
        self.pending = 0

    def add(self, utterances: pa.RecordBatch | None, rejects: pa.RecordBatch | None) -> None:
        if utterances is not None and utterances.num_rows:
            self.utterances.append(utterances)
            self.pending += utterances.num_rows
        if rejects is not None and rejects.num_rows:
            self.rejects.append(rejects)
        if self.pending >= self.cfg.flush_rows:
            self.flush()

    def flush(self) -> None:
        if self.utterances:
            table = pa.Table.from_batches(self.utterances)
            storage.write_table(table, f"{self.cfg.output}/utterances", UTTERANCES_SCHEMA, metadata=self.metadata)
        if self.rejects:
            table = pa.Table.from_batches(self.rejects)
            storage.write_table(table, f"{self.cfg.output}/rejects", REJECTS_SCHEMA, metadata=self.metadata)
        self.utterances, self.rejects, self.pending = [], [], 0


def done_tasks(output: str, retry_rejects: bool = False) -> frozenset[str]:
    """Task ids an earlier run finished: those with utterances, and (unless retried) those with a final reject
    row. A file that could not be read (stage ``io``: storage down, access denied) is not final: it is tried
    again. The rejects table is a log of attempts: a retried task that now succeeds keeps its old reject rows."""
    from cmbert.stages import RETRIED_STAGE

    storage.check_written_version(f"{output}/utterances", UTTERANCES_SCHEMA)  # other ids: a rerun would duplicate
    storage.check_written_version(f"{output}/rejects", REJECTS_SCHEMA)
    done = storage.distinct_values(f"{output}/utterances", "task_id", UTTERANCES_SCHEMA)
    if not retry_rejects:
        rejects = storage.read_table(f"{output}/rejects", REJECTS_SCHEMA, columns=["task_id", "stage"])
        done |= {t for t, stage in zip(rejects.column("task_id").to_pylist(), rejects.column("stage").to_pylist())
                 if stage != RETRIED_STAGE}
    return frozenset(done)


def run(cfg: PreprocessConfig) -> Tally:
    import ray

    from cmbert.raysetup import cluster_cpus, init_ray, worker_runtime_env
    from cmbert.stages import ClipStage, ModelChoice, tasks_for_ray

    run_id = new_run_id("preprocess")
    started = utc_now()
    manifest = read_manifest(cfg.manifest) if cfg.manifest else None
    tasks, early = build_tasks(cfg.input, manifest, cfg.text_column, cfg.label_column)
    done = done_tasks(cfg.output, cfg.retry_rejects)
    metadata = {"cmbert.run_id": run_id, "cmbert.code_version": code_version(), "cmbert.config": config_json(cfg)}
    publisher = Publisher(cfg, metadata)
    tally = Tally(tasks=len(tasks) + len(early))

    early_new = [r for r in dict((r.task_id, r) for r in early).values() if r.task_id not in done]
    tally.skipped += len(early) - len(early_new)
    tally.rejects += len(early_new)
    tally.done += len(early)
    if early_new:
        rows = [r.to_row(run_id, started) for r in early_new]
        publisher.add(None, pa.RecordBatch.from_pylist(rows, schema=REJECTS_SCHEMA))

    if tasks:
        init_ray()
        params = ClipParams(diarizer=cfg.diarizer, words=cfg.words, max_clip_seconds=cfg.max_clip_seconds,
                            num_speakers=cfg.num_speakers)
        choice = ModelChoice(features=cfg.features, feature_model=cfg.feature_model, asr_model=cfg.asr_model,
                             diarizer_model=cfg.diarizer_model,
                             device="cuda" if cfg.gpu else "cpu")
        actors = cfg.actors or max(1, int(cluster_cpus()))
        resources = {"num_gpus": 1} if cfg.gpu else {"num_cpus": 0.5}  # fractional: 2 actors on 2 CPUs, no deadlock
        # Never credentials in a runtime_env: Ray logs its env_vars (runtime_env_agent.log) and shows them in the
        # dashboard. The actors read the input through the filesystem passed to them (it carries the credentials).
        env_vars = worker_runtime_env().get("env_vars", {})  # never credentials (cmbert/raysetup.py)
        env_vars |= faults.worker_env()  # tests only
        if env_vars:
            resources["runtime_env"] = {"env_vars": env_vars}
        ray.data.DataContext.get_current().enable_progress_bars = False  # we print our own progress line
        ds = ray.data.from_items(tasks_for_ray(tasks), override_num_blocks=min(len(tasks), 200))
        results = ds.map_batches(
            ClipStage,
            fn_constructor_kwargs={"input_uri": cfg.input, "params": params, "models": choice, "done": done,
                                   "run_id": run_id, "created_at": started,
                                   "input_fs": storage.locate(cfg.input).fs if storage.is_s3(cfg.input) else None},
            batch_size=1,
            batch_format="numpy",
            # All actors start at once (an autoscaling pool starting from 1 left a core idle for its first ~20 s), but
            # the job runs with fewer when a busy cluster cannot place them all (a fixed-size pool would wait).
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
            **resources,
        )
        owned: set[str] = set()
        batches = iter(results.iter_batches(batch_format="pyarrow", batch_size=None))
        with contextlib.closing(batches):  # on failure too: shuts the executor down and frees the actors now
            for block in batches:
                collect(block, owned, publisher, tally)
                now = time.monotonic()
                if now - tally.last_print > 5:
                    print(tally.line(), flush=True)
                    tally.last_print = now
    publisher.flush()
    write_run_row(cfg.output, job="preprocess", status="succeeded", run_id=run_id, started=started, config=cfg,
                  input=cfg.input or cfg.manifest or "", n_input=tally.tasks, n_output=tally.utterances,
                  n_rejected=tally.rejects, n_skipped=tally.skipped, audio_seconds=tally.audio_seconds)
    return tally


def collect(block: pa.Table, owned: set[str], publisher: Publisher, tally: Tally) -> None:
    """Split one result block into utterances and rejects. A task id already taken in this run (an unannotated
    clip named twice, or two such files with the same bytes; annotated rows each have their own) is dropped, so no
    run writes a task twice."""
    kinds = block.column("kind").to_pylist()
    task_ids = block.column("task_id").to_pylist()
    fresh = {t for t, k in zip(task_ids, kinds) if k != "skipped"} - owned
    keep_utt, keep_rej = [], []
    for i, (kind, tid) in enumerate(zip(kinds, task_ids)):
        if kind == "skipped" or tid not in fresh:
            continue
        (keep_utt if kind == "utterance" else keep_rej).append(i)
    counted = {t for t in task_ids}
    tally.done += len(counted)
    tally.skipped += len(counted - fresh)
    tally.rejects += len({task_ids[i] for i in keep_rej})
    tally.utterances += len(keep_utt)
    tally.audio_seconds += sum(block.column("audio_seconds").take(pa.array(keep_utt, pa.int64())).to_pylist())
    owned |= fresh
    utt = struct_rows(block, "utterance", keep_utt)
    rej = struct_rows(block, "reject", keep_rej)
    publisher.add(utt, rej)


def struct_rows(block: pa.Table, column: str, rows: list[int]) -> pa.RecordBatch | None:
    if not rows:
        return None
    return pa.RecordBatch.from_struct_array(block.column(column).take(pa.array(rows, pa.int64())).combine_chunks())


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PreprocessConfig, argv)
    try:
        tally = run(cfg)
    except (ManifestError, storage.StorageError, storage.SchemaMismatchError) as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 2
    print(tally.line())
    print(f"[preprocess] utterances: {cfg.output}/utterances  rejects: {cfg.output}/rejects  runs: {cfg.output}/runs")
    return 0


if __name__ == "__main__":
    from cmbert.console import quiet_console

    quiet_console()
    sys.exit(main())
