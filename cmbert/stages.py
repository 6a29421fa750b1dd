"""Thin Ray Data wrappers around the pure stage functions.

``ClipStage`` is a callable class for ``Dataset.map_batches`` with an actor pool: it loads each model
once (lazily, so a text-only run never loads the audio models), reads a clip's bytes, names it by its
content hash, skips it when an earlier run already did it, and runs ``cmbert.pipeline.process_clip``.
A failure of one clip becomes a reject row; it never kills the job.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from cmbert import storage
from cmbert.audio.features import DEFAULT_BACKEND
from cmbert.faults import kill_point
from cmbert.manifest import Clip, Reject, StageError, content_id, source_id, task_id, text_id
from cmbert.pipeline import ClipModels, ClipParams, diarizer_name, process_clip, text_utterance
from schemas import REJECTS_SCHEMA, UTTERANCES_SCHEMA

# Rejects at this stage (a file that exists but could not be read: storage unreachable, access denied) are
# not final: the next run tries the file again (jobs/preprocess.py done_tasks). All other rejects are final
# unless --retry-rejects.
RETRIED_STAGE = "io"
UTTERANCE_TYPE = pa.struct(list(UTTERANCES_SCHEMA))
REJECT_TYPE = pa.struct(list(REJECTS_SCHEMA))
RESULT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # utterance | reject | skipped
        ("task_id", pa.string()),
        ("audio_seconds", pa.float64()),  # decoded audio of the task, on its first row only
        ("utterance", UTTERANCE_TYPE),
        ("reject", REJECT_TYPE),
    ]
)


@dataclass(frozen=True)
class ModelChoice:
    """Which models a worker loads; paths/ids are the user's, defaults are the bundled ones."""

    features: str = DEFAULT_BACKEND
    asr_model: str | None = None  # faster-whisper size or path; None = bundled tiny.en
    feature_model: str | None = None  # whisper features: CTranslate2 whisper path; None = bundled tiny.en
    diarizer_model: str | None = None  # pyannote pipeline path or hub id; None = bundled segmentation-3.0 + CAM++
    device: str = "cpu"


class ClipStage:
    def __init__(self, input_uri: str | None, params: ClipParams, models: ModelChoice, run_id: str, created_at,
                 torch_threads: int = 1, input_fs=None):
        """``input_fs``: the input's pyarrow filesystem as the driver resolved it. It pickles with its endpoint
        and credentials, so actors need no AWS environment (a Ray runtime_env's env_vars end up in Ray's logs)."""
        import torch

        torch.set_num_threads(torch_threads)  # one actor per core: no oversubscription
        self.torch_threads = torch_threads
        self.input_uri = input_uri
        self.input_fs = input_fs
        self.params = params
        self.choice = models
        self.run_id = run_id
        self.created_at = created_at
        self._models: ClipModels | None = None
        self._root = None  # the input root as a Location, resolved on first read
        self._data = None

    # ------------------------------------------------------------ models, loaded once per actor
    def models(self, need_asr: bool, need_aligner: bool) -> ClipModels:
        from cmbert.audio import diarize, features, vad, words

        if self._models is None:
            self._models = ClipModels(vad=vad.load_vad(), features=features.load_features(
                self.choice.features, model_path=self.choice.feature_model, device=self.choice.device,
                cpu_threads=self.torch_threads))
            diarizer = diarizer_name(self.params)
            if diarizer == "dvector":
                self._models.speaker_encoder = diarize.load_speaker_encoder(device=self.choice.device)
            elif diarizer == "pyannote":  # None: the bundled offline pipeline
                self._models.pyannote = diarize.load_pyannote(self.choice.diarizer_model, device=self.choice.device)
        if need_aligner and self._models.aligner is None:
            self._models.aligner = words.load_aligner()
        if need_asr and self._models.asr is None:
            shared = getattr(self._models.features, "whisper", None)  # the whisper features backend's model
            if shared is not None and self.choice.asr_model == self.choice.feature_model:
                self._models.asr = shared  # one whisper per actor for words and features (same model, same threads)
            else:
                cpu = self.choice.device == "cpu"
                # The actor's thread count, not CTranslate2's default of 4: two actors on two cores would run
                # eight threads and slow each other down.
                self._models.asr = words.load_asr(self.choice.asr_model, device=self.choice.device,
                                                  compute_type="int8" if cpu else "float16",
                                                  cpu_threads=self.torch_threads if cpu else 0)
        return self._models

    def read_bytes(self, rel: str) -> bytes:
        if self._root is None:
            self._root = input_root(self.input_uri, self.input_fs)
        return storage.read_bytes(self._root.join(rel))

    # ------------------------------------------------------------ one batch of tasks
    def __call__(self, batch: dict) -> pa.Table:
        rows = []
        for i in range(len(batch["source"])):
            task = {k: batch[k][i] for k in batch}
            rows.extend(self.run_task(task))
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def run_task(self, task: dict) -> list[dict]:
        """One planned task (``identify_tasks`` named it) -> its utterance rows, or one reject row."""
        if task["kind"] == "reject":
            return [self.reject_row(Reject(task["task_id"], task["clip_id"], task["source"], task["stage"],
                                           task["reason"]))]
        clip = self.make_clip(task)
        if isinstance(clip, Reject):
            return [self.reject_row(clip)]
        if clip.task_id != task["task_id"]:  # the file's bytes changed since the run named it: try again next run
            return [self.reject_row(Reject(task["task_id"], task["clip_id"], task["source"], RETRIED_STAGE,
                                           "file changed during the run"))]
        try:
            if task["kind"] == "text":
                utterances, seconds = [text_utterance(clip)], 0.0
            else:
                mode_needs_asr = self.params.words == "asr" or (self.params.words == "auto" and not clip.text)
                models = self.models(need_asr=mode_needs_asr, need_aligner=not mode_needs_asr)
                result = process_clip(self._data, clip, models, self.params)
                utterances, seconds = result.utterances, result.audio_seconds
        except StageError as exc:
            return [self.reject_row(Reject(clip.task_id, clip.clip_id, clip.source, exc.stage, exc.reason))]
        except Exception as exc:  # a bug or a library failure on odd input: keep the job alive, keep the reason
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            traceback.print_exc()
            return [self.reject_row(Reject(clip.task_id, clip.clip_id, clip.source, "internal", reason))]
        finally:
            self._data = None
        if not utterances:
            return [self.reject_row(Reject(clip.task_id, clip.clip_id, clip.source, "utterances", "no utterances"))]
        out = []
        for n, utt in enumerate(utterances):
            out.append({"kind": "utterance", "task_id": clip.task_id, "audio_seconds": seconds if n == 0 else 0.0,
                        "utterance": utt.to_row(self.run_id, self.created_at)})
        return out

    def make_clip(self, task: dict) -> Clip | Reject:
        self._data = None
        return make_clip(task, self.read_bytes, self.input_uri, self)

    def reject_row(self, reject: Reject) -> dict:
        return {"kind": "reject", "task_id": reject.task_id, "audio_seconds": 0.0,
                "reject": reject.to_row(self.run_id, self.created_at)}


def input_root(input_uri: str | None, input_fs=None) -> storage.Location:
    """The input root as a Location on ``input_fs`` (the driver's filesystem, pickled here) when given."""
    loc = storage.locate(input_uri)
    return storage.Location(input_fs, loc.path, loc.uri) if input_fs is not None else loc


def make_clip(task: dict, read_bytes, input_uri: str | None, holder=None) -> Clip | Reject:
    """The task's Clip, named by its content hash (media: reads the bytes; ``holder._data`` keeps them), or a
    Reject when the file cannot be read."""
    extra = tuple(tuple(p) for p in json.loads(task["extra"]))
    label = None if task["label"] is None or task["label"] != task["label"] else float(task["label"])
    start = _opt_float(task["start"])
    end = _opt_float(task["end"])
    row = task.get("row") or None  # the annotated manifest row's key: one utterance
    if task["kind"] == "text":
        cid = text_id(task["text"])
        return Clip(cid, task["source"], task["text"], label, None, None, extra, row)
    try:
        data = read_bytes(task["source"])
    except FileNotFoundError:
        sid = source_id(task["source"])
        return Reject(task_id(sid, start, end, row), sid, task["source"], "read", "file does not exist")
    except storage.StorageError as exc:  # storage trouble (S3 down, network, permissions): the next run tries again
        sid = source_id(task["source"])
        reason = str(exc)
        return Reject(task_id(sid, start, end, row), sid, task["source"], RETRIED_STAGE, reason[:300])
    if holder is not None:
        holder._data = data
    cid = content_id(data)
    return Clip(cid, task["source"], task["text"] or None, label, start, end, extra, row)


def identify_tasks(batch: pa.Table, input_uri: str | None, input_fs=None) -> pa.Table:
    """Name every task of a batch by its content (``task_id``, ``clip_id``): what the skip-set is keyed on.

    Runs in Ray tasks (no models). A media file is read once here to hash it, and again by the worker that
    processes it; a file that cannot be read becomes a planned reject."""
    root = None
    out = []
    for task in batch.to_pylist():
        if task["kind"] != "reject":
            if task["kind"] == "media" and root is None:
                root = input_root(input_uri, input_fs)

            def read(rel):
                return storage.read_bytes(root.join(rel))

            clip = make_clip(task, read, input_uri)
            if isinstance(clip, Reject):
                task |= {"kind": "reject", "task_id": clip.task_id, "clip_id": clip.clip_id, "stage": clip.stage,
                         "reason": clip.reason}
            else:
                task |= {"task_id": clip.task_id, "clip_id": clip.clip_id}
        out.append(task)
    return pa.Table.from_pylist(out, schema=TASK_SCHEMA)


class ClipWriter:
    """``ClipStage`` whose worker writes its batch's utterances and rejects itself, returning manifest rows only."""

    def __init__(self, stage_kwargs: dict, utterances, rejects):
        self.stage = ClipStage(**stage_kwargs)
        self.utterances, self.rejects = utterances, rejects  # cmbert.incremental.StagedFiles

    def __call__(self, batch: pa.Table) -> pa.Table:
        from cmbert.incremental import DONE, manifest_row, manifest_table

        todo = batch.drop_columns([DONE]) if DONE in batch.column_names else batch
        result = self.stage(todo.to_pydict()) if todo.num_rows else RESULT_SCHEMA.empty_table()
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


def _opt_float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


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


TASK_SCHEMA = pa.schema([
    ("order", pa.int64()),  # position in the plan: of two tasks with one id, the first is kept
    ("kind", pa.string()),  # media | text | reject (found by planning or identify_tasks)
    ("source", pa.string()),
    ("text", pa.string()),
    ("label", pa.float64()),  # NaN: none
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("extra", pa.string()),  # JSON list of [column, value]
    ("row", pa.string()),  # the annotated manifest row's key ("" when none)
    ("task_id", pa.string()),  # set by identify_tasks (media) or planning (text, reject)
    ("clip_id", pa.string()),
    ("stage", pa.string()),  # rejects only
    ("reason", pa.string()),
])


def tasks_for_ray(tasks: list[dict], rejects: list[Reject] = ()) -> list[dict]:
    """Uniform rows of ``TASK_SCHEMA`` for ``ray.data.from_items``: the planned tasks, then the rejects planning
    found (they go through the same skip-set and writers as every other task)."""
    nan = float("nan")
    rows = [
        {
            "order": i,
            "kind": t["kind"],
            "source": t["source"],
            "text": t["text"] or "",
            "label": nan if t["label"] is None else float(t["label"]),
            "start": nan if t["start"] is None else float(t["start"]),
            "end": nan if t["end"] is None else float(t["end"]),
            "extra": json.dumps([list(p) for p in t["extra"]]),
            "row": t.get("row") or "",
            "task_id": task_id(text_id(t["text"]), row=t.get("row") or None) if t["kind"] == "text" else None,
            "clip_id": text_id(t["text"]) if t["kind"] == "text" else None,
            "stage": None, "reason": None,
        }
        for i, t in enumerate(tasks)
    ]
    for r in rejects:
        rows.append({"order": len(rows), "kind": "reject", "source": r.source, "text": "", "label": nan,
                     "start": nan, "end": nan, "extra": "[]", "row": "", "task_id": r.task_id, "clip_id": r.clip_id,
                     "stage": r.stage, "reason": r.reason})
    return rows
