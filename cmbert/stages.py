"""Thin Ray Data wrappers around the pure stage functions.

``ClipStage`` is a callable class for ``Dataset.map_batches`` with an actor pool: it loads each model
once (lazily, so a text-only run never loads the audio models), reads a planned task's bytes, checks they are
still those the plan named it by (``identify_tasks``), and runs ``cmbert.pipeline.process_clip``.
A failure of one clip becomes a reject row; it never kills the job.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from cmbert import storage
from cmbert.faults import kill_point
from cmbert.manifest import Clip, ClipTask, Reject, StageError, content_id, source_id, task_id, text_id
from cmbert.pipeline import ClipModels, ClipParams, diarizer_name, process_clip, text_utterance, words_mode
from cmbert.storage import Location
from schemas import CLIP_RESULT_SCHEMA, CLIP_TASK_SCHEMA, REJECTS_SCHEMA, UTTERANCES_SCHEMA

# Rejects at this stage (a file that exists but could not be read: storage unreachable, access denied) are
# not final: the next run tries the file again (``done_keys``). All other rejects are final
# unless --retry-rejects.
RETRIED_STAGE = "io"


def done_keys(output: str, retry_rejects: bool = False):
    """Task ids an earlier run finished, as a Ray dataset of ``task_id`` (None when there are none): those with
    utterances, and (unless retried) those with a final reject row. A file that could not be read (stage ``io``:
    storage down, access denied) is not final: it is tried again. The rejects table is a log of attempts: a
    retried task that now succeeds keeps its old reject rows."""
    from cmbert import incremental

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


class ClipStage:
    def __init__(self, input: str | Location | None, params: ClipParams, run_id: str, created_at,
                 torch_threads: int = 1):
        """``input``: the input root, best as the Location the driver resolved: it pickles with its filesystem
        (an S3 one with its endpoint and credentials), so actors need no AWS environment (a Ray runtime_env's
        env_vars end up in Ray's logs)."""
        import torch

        torch.set_num_threads(torch_threads)  # one actor per core: no oversubscription
        self.torch_threads = torch_threads
        self.input = input
        self.params = params
        self.run_id = run_id
        self.created_at = created_at
        self._models: ClipModels | None = None

    # ------------------------------------------------------------ models, loaded once per actor
    def models(self, need_asr: bool, need_aligner: bool) -> ClipModels:
        from cmbert.audio import diarize, features, vad, words

        p = self.params
        if self._models is None:
            self._models = ClipModels(vad=vad.load_vad(), features=features.load_features(
                p.features, model_path=p.feature_model, device=p.device, cpu_threads=self.torch_threads))
            diarizer = diarizer_name(p)
            if diarizer == "dvector":
                self._models.speaker_encoder = diarize.load_speaker_encoder(device=p.device)
            elif diarizer == "pyannote":  # None: the bundled offline pipeline
                self._models.pyannote = diarize.load_pyannote(p.diarizer_model, device=p.device)
        if need_aligner and self._models.aligner is None:
            self._models.aligner = words.load_aligner()
        if need_asr and self._models.asr is None:
            shared = getattr(self._models.features, "whisper", None)  # the whisper features backend's model
            if shared is not None and p.asr_model == p.feature_model:
                self._models.asr = shared  # one whisper per actor for words and features (same model, same threads)
            else:
                cpu = p.device == "cpu"
                # The actor's thread count, not CTranslate2's default of 4: two actors on two cores would run
                # eight threads and slow each other down.
                self._models.asr = words.load_asr(p.asr_model, device=p.device,
                                                  cpu_threads=self.torch_threads if cpu else 0)
        return self._models

    # ------------------------------------------------------------ one batch of tasks
    def __call__(self, batch: pa.Table) -> pa.Table:
        """Rows of ``CLIP_TASK_SCHEMA`` -> rows of ``CLIP_RESULT_SCHEMA``."""
        rows = []
        for row in batch.to_pylist():
            rows.extend(self.run_task(ClipTask.from_row(row)))
        return pa.Table.from_pylist(rows, schema=CLIP_RESULT_SCHEMA)

    def run_task(self, task: ClipTask) -> list[dict]:
        """One planned task (``identify_tasks`` named it) -> its utterance rows, or one reject row."""
        if task.kind == "reject":
            return [self.reject_row(task.reject())]
        clip, data = make_clip(task, self.input)
        if isinstance(clip, Reject):
            return [self.reject_row(clip)]
        if clip.task_id != task.task_id:  # the file's bytes changed since the run named it: try again next run
            return [self.reject_row(Reject(task.task_id, task.clip_id, task.source, RETRIED_STAGE,
                                           "file changed during the run"))]
        try:
            if task.kind == "text":
                utterances, seconds = [text_utterance(clip)], 0.0
            else:
                mode = words_mode(clip, self.params)
                models = self.models(need_asr=mode == "asr", need_aligner=mode == "align")
                result = process_clip(data, clip, models, self.params)
                utterances, seconds = result.utterances, result.audio_seconds
        except StageError as exc:
            return [self.reject_row(Reject(clip.task_id, clip.clip_id, clip.source, exc.stage, exc.reason))]
        except Exception as exc:  # a bug or a library failure on odd input: keep the job alive, keep the reason
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            traceback.print_exc()
            return [self.reject_row(Reject(clip.task_id, clip.clip_id, clip.source, "internal", reason))]
        if not utterances:
            return [self.reject_row(Reject(clip.task_id, clip.clip_id, clip.source, "utterances", "no utterances"))]
        out = []
        for n, utt in enumerate(utterances):
            out.append({"kind": "utterance", "task_id": clip.task_id, "audio_seconds": seconds if n == 0 else 0.0,
                        "utterance": utt.to_row(self.run_id, self.created_at)})
        return out

    def reject_row(self, reject: Reject) -> dict:
        return {"kind": "reject", "task_id": reject.task_id, "audio_seconds": 0.0,
                "reject": reject.to_row(self.run_id, self.created_at)}


def make_clip(task: ClipTask, input: str | Location | None) -> tuple[Clip | Reject, bytes | None]:
    """The task's Clip named by its content, with the media bytes it was named by (None for a text row); or a
    Reject when the file cannot be read."""
    if task.kind == "text":
        return task.clip(text_id(task.text)), None
    try:
        data = storage.read_bytes(storage.locate(input).join(task.source))
    except FileNotFoundError:
        sid = source_id(task.source)
        return Reject(task_id(sid, task.start, task.end, task.row), sid, task.source, "read",
                      "file does not exist"), None
    except storage.StorageError as exc:  # storage trouble (S3 down, network, permissions): the next run tries again
        sid = source_id(task.source)
        return Reject(task_id(sid, task.start, task.end, task.row), sid, task.source, RETRIED_STAGE,
                      str(exc)[:300]), None
    return task.clip(content_id(data)), data


def identify_tasks(batch: pa.Table, input: str | Location | None) -> pa.Table:
    """Name every task of a batch by its content (``task_id``, ``clip_id``): what the skip-set is keyed on.

    Runs in Ray tasks (no models). A media file is read once here to hash it, and again by the worker that
    processes it; a file that cannot be read becomes a planned reject. Hashing in the worker instead would save
    only new clips' second read (a done clip is read here either way: its id is its hash) and would lose the
    group by on the id that skips done work and keeps one of two same-content files per run, distributed."""
    out = []
    for task in map(ClipTask.from_row, batch.to_pylist()):
        if task.kind != "reject":
            clip, _ = make_clip(task, input)
            if isinstance(clip, Reject):
                task = replace(task, kind="reject", task_id=clip.task_id, clip_id=clip.clip_id, stage=clip.stage,
                               reason=clip.reason)
            else:
                task = replace(task, task_id=clip.task_id, clip_id=clip.clip_id)
        out.append(task.to_row())
    return pa.Table.from_pylist(out, schema=CLIP_TASK_SCHEMA)


def task_table(tasks: list[ClipTask], rejects: list[Reject] = ()) -> pa.Table:
    """The plan as one ``CLIP_TASK_SCHEMA`` table: the planned tasks, then the rejects planning found (they go
    through the same skip-set and writers as every other task), each with its position (``order``)."""
    planned = [*tasks, *map(ClipTask.of_reject, rejects)]
    return pa.Table.from_pylist([replace(t, order=i).to_row() for i, t in enumerate(planned)],
                                schema=CLIP_TASK_SCHEMA)


class ClipWriter:
    """``ClipStage`` whose worker writes its batch's utterances and rejects itself, returning manifest rows only."""

    def __init__(self, stage_kwargs: dict, utterances, rejects):
        self.stage = ClipStage(**stage_kwargs)
        self.utterances, self.rejects = utterances, rejects  # cmbert.incremental.StagedFiles

    def __call__(self, batch: pa.Table) -> pa.Table:
        from cmbert.incremental import DONE, manifest_row, manifest_table

        todo = batch.drop_columns([DONE]) if DONE in batch.column_names else batch
        result = self.stage(todo) if todo.num_rows else CLIP_RESULT_SCHEMA.empty_table()
        kinds = result.column("kind")
        keys = todo.column("task_id").to_pylist()
        manifests = []
        utt = result.filter(pc.equal(kinds, "utterance"))
        rej = result.filter(pc.equal(kinds, "reject"))
        for rows, column, target in ((utt, "utterance", self.utterances), (rej, "reject", self.rejects)):
            if rows.num_rows:
                table = pa.Table.from_struct_array(rows.column(column).combine_chunks())
                manifests.append(target.write(table, keys, pc.count_distinct(rows.column("task_id")).as_py()))
        manifests.append(manifest_row(items=todo.num_rows, rejected=rej.num_rows,
                                      audio_seconds=float(pc.sum(result.column("audio_seconds")).as_py() or 0.0)))
        kill_point("preprocess")  # tests only: inert unless CMBERT_TEST_KILL is set (cmbert/faults.py)
        return manifest_table(manifests)


class ScoreWriter:
    """``cmbert.scoring.ScoreStage`` whose worker reads its input files, scores the planned rows and writes the
    score files itself, returning manifest rows only.

    A batch is a few input files, each with the ids to score in it (``ids``) and how many of its ids this model
    version had already scored (``n_done``), as ``cmbert.incremental.pending`` and a group by file planned them."""

    def __init__(self, options, input_fs, scores, partition: tuple[str, ...], rows_per_pass: int, flush_rows: int):
        from cmbert.scoring import ScoreStage

        self.stage = ScoreStage(options)
        self.input_fs, self.scores, self.partition = input_fs, scores, partition
        self.rows_per_pass, self.flush_rows = rows_per_pass, max(1, flush_rows)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from cmbert.incremental import manifest_row, manifest_table
        from cmbert.scoring import INPUT_COLUMNS, PARTITION_COLUMNS, scorable

        parts = []
        paths = batch.column("path").to_pylist()
        for path, ids in zip(paths, batch.column("ids").to_pylist()):
            if ids:
                parts.append(storage.read_file(storage.Location(self.input_fs, path, path), columns=INPUT_COLUMNS,
                                               filter=pc.field("utterance_id").isin(ids)))
        rows = pa.concat_tables(parts, promote_options="permissive") if parts else None
        n = 0 if rows is None else rows.num_rows
        reasons: dict[str, int] = {}
        excluded = 0
        scored = []
        if n:
            why = [scorable(self.stage.audio, a, f) for a, f in
                   zip(rows.column("audio_present").to_pylist(), rows.column("feature_set").to_pylist())]
            for w in why:
                if w is not None:
                    reasons[w] = reasons.get(w, 0) + 1
                    excluded += 1
            rows = rows.filter(pa.array([w is None for w in why], pa.bool_()))
            for start in range(0, rows.num_rows, self.rows_per_pass):
                out = self.stage(rows.slice(start, self.rows_per_pass))
                errors = out.column("error")
                for reason in out.filter(errors.is_valid()).column("error").to_pylist():
                    reasons[reason] = reasons.get(reason, 0) + 1
                scored.append(out.filter(errors.is_null()).drop_columns(["error"]))
        manifests = []
        table = pa.concat_tables(scored) if scored else None
        if table is not None and table.num_rows:
            for k, start in enumerate(range(0, table.num_rows, self.flush_rows)):
                chunk = table.slice(start, self.flush_rows)
                manifests.append(self.scores.write(chunk, paths, chunk.num_rows, sub=self.partition, part=k,
                                                   drop=PARTITION_COLUMNS))
        manifests.append(manifest_row(items=n, skipped=int(pc.sum(batch.column("n_done")).as_py() or 0),
                                      rejected=sum(reasons.values()), excluded=excluded,
                                      reasons=json.dumps(reasons, sort_keys=True)))
        return manifest_table(manifests)
