"""Thin Ray Data wrappers around the pure stage functions.

``ClipStage`` is a callable class for ``Dataset.map_batches`` with an actor pool: it loads each model
once (lazily, so a text-only run never loads the audio models), reads a clip's bytes, names it by its
content hash, skips it when an earlier run already did it, and runs ``cmbert.pipeline.process_clip``.
A failure of one clip becomes a reject row; it never kills the job.
"""

from __future__ import annotations

import json
import posixpath
import traceback
from dataclasses import dataclass

import pyarrow as pa

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
    def __init__(self, input_uri: str | None, params: ClipParams, models: ModelChoice, done: frozenset[str],
                 run_id: str, created_at, torch_threads: int = 1, input_fs=None):
        """``input_fs``: the input's pyarrow filesystem as the driver resolved it. It pickles with its endpoint
        and credentials, so actors need no AWS environment (a Ray runtime_env's env_vars end up in Ray's logs)."""
        import torch

        torch.set_num_threads(torch_threads)  # one actor per core: no oversubscription
        self.torch_threads = torch_threads
        self.input_uri = input_uri
        self.input_fs = input_fs
        self.params = params
        self.choice = models
        self.done = done
        self.run_id = run_id
        self.created_at = created_at
        self._models: ClipModels | None = None
        self._fs = None

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
        from cmbert.storage import locate

        if self._fs is None:
            loc = locate(self.input_uri)
            self._fs, self._root = self.input_fs or loc.fs, loc.path
        with self._fs.open_input_file(posixpath.join(self._root, rel)) as f:
            return f.read()

    # ------------------------------------------------------------ one batch of tasks
    def __call__(self, batch: dict) -> pa.Table:
        rows = []
        for i in range(len(batch["source"])):
            task = {k: batch[k][i] for k in batch}
            rows.extend(self.run_task(task))
        kill_point("preprocess")  # tests only: inert unless CMBERT_TEST_KILL is set (cmbert/faults.py)
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def run_task(self, task: dict) -> list[dict]:
        clip = self.make_clip(task)
        if clip.task_id in self.done:  # done earlier: finished, or rejected (an unreadable file included)
            return [{"kind": "skipped", "task_id": clip.task_id}]
        if isinstance(clip, Reject):
            return [self.reject_row(clip)]
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
        extra = tuple(tuple(p) for p in json.loads(task["extra"]))
        label = None if task["label"] is None or task["label"] != task["label"] else float(task["label"])
        start = _opt_float(task["start"])
        end = _opt_float(task["end"])
        row = task.get("row") or None  # the annotated manifest row's key: one utterance
        if task["kind"] == "text":
            cid = text_id(task["text"])
            return Clip(cid, task["source"], task["text"], label, None, None, extra, row)
        self._data = None
        try:
            self._data = self.read_bytes(task["source"])
        except FileNotFoundError:
            sid = source_id(task["source"])
            return Reject(task_id(sid, start, end, row), sid, task["source"], "read", "file does not exist")
        except OSError as exc:  # storage trouble (S3 down, network, permissions): the next run tries again
            from cmbert.storage import explain

            sid = source_id(task["source"])
            reason = str(explain(exc, f"{self.input_uri.rstrip('/')}/{task['source']}", "read"))
            return Reject(task_id(sid, start, end, row), sid, task["source"], RETRIED_STAGE, reason[:300])
        cid = content_id(self._data)
        return Clip(cid, task["source"], task["text"] or None, label, start, end, extra, row)

    def reject_row(self, reject: Reject) -> dict:
        return {"kind": "reject", "task_id": reject.task_id, "audio_seconds": 0.0,
                "reject": reject.to_row(self.run_id, self.created_at)}


def _opt_float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def tasks_for_ray(tasks: list[dict]) -> list[dict]:
    """Uniform column types for ``ray.data.from_items`` (extra as JSON; missing numbers as NaN)."""
    nan = float("nan")
    return [
        {
            "kind": t["kind"],
            "source": t["source"],
            "text": t["text"] or "",
            "label": nan if t["label"] is None else float(t["label"]),
            "start": nan if t["start"] is None else float(t["start"]),
            "end": nan if t["end"] is None else float(t["end"]),
            "extra": json.dumps([list(p) for p in t["extra"]]),
            "row": t.get("row") or "",
        }
        for t in tasks
    ]
