"""Scoring: utterance rows -> sentiment scores, and the thin Ray Data wrapper around it.

The top half is pure (no Ray, no I/O): which rows a run must score, whether a checkpoint fits the
utterances, length bucketing, one model pass over rows, and score rows in ``schemas.SCORES_SCHEMA`` form.
``ScoreStage`` at the bottom is the callable class for ``Dataset.map_batches``: it loads the checkpoint
once per actor and maps a batch of utterance rows to score rows.

Audio-absent utterances (``feature_set == NO_AUDIO``) and which checkpoint scores them:
- a text-only checkpoint (``fusion == TEXT_ONLY``, or trained on text-only data: feature_set NO_AUDIO) scores any
  utterance and never looks at its audio (word features are dropped before collation);
- a CM-BERT checkpoint whose score cannot depend on audio (``cls_audio == "zero"`` with kernel-1, bias-free
  projections: the paper's model, see cmbert/model.py) scores them with zero audio: the score is what it
  would be with their audio;
- any other audio checkpoint scores them with zero audio only when its meta says it was trained to
  (``meta["missing_audio"] == "zeros"``); otherwise they are left unscored and counted as rejected, so a
  later run with a suitable checkpoint picks them up.
Utterances with audio must have the checkpoint's feature set and dimension, or the run is refused
(``check_compatible``: the one rule, for score and evaluate alike; ``FeatureMismatch`` its one error).

Between the two halves, what a score run plans from its input before any model loads (Parquet footers, the index
columns as a Ray dataset, the ids already scored).
"""

from __future__ import annotations

import datetime as dt
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from cmbert import incremental, storage
from cmbert.collate import length_buckets
from cmbert.errors import FeatureMismatch
from cmbert.faults import kill_point
from cmbert.manifest import NO_AUDIO
from cmbert.model import TEXT_ONLY
from schemas import SCORE_RESULT_SCHEMA

if TYPE_CHECKING:  # a type only (cmbert.checkpoint imports this module to build ModelInfo)
    from cmbert.checkpoint import CheckpointMeta

SCORE_MIN, SCORE_MAX = -3.0, 3.0
PARTITION_COLUMNS = ("score_date", "model_version")
# Utterance columns the scorer reads (``words`` carries the per-word audio features).
INPUT_COLUMNS = ["utterance_id", "clip_id", "source", "extra", "speaker", "start", "end", "text", "words",
                 "audio_present", "feature_set", "feature_dim"]
# Utterance columns copied into every score row as they are: where the scored words come from.
CARRIED_COLUMNS = ("utterance_id", "clip_id", "source", "extra", "speaker", "start", "end", "text")


# ---------------------------------------------------------------- score -> labels


def clip_score(score: float) -> float:
    return float(min(SCORE_MAX, max(SCORE_MIN, score)))


def polarity(score: float) -> str:
    """Binary sentiment; 0 counts as positive (the CMU-MOSI convention for non-negative scores)."""
    return "positive" if score >= 0 else "negative"


def label7(score: float) -> int:
    """Seven classes -3..3: round(clip(score)), half to even like ``np.round`` in the MOSI evaluations."""
    return int(np.round(clip_score(score)))


# ---------------------------------------------------------------- which checkpoint fits which rows


@dataclass(frozen=True)
class ModelAudio:
    """What a checkpoint needs from an utterance's audio."""

    feature_set: str  # NO_AUDIO for a text-only model
    feature_dim: int
    missing_audio: str = "refuse"  # "zeros": audio-absent rows are scored with zero audio

    @property
    def text_only(self) -> bool:
        return self.feature_set == NO_AUDIO or self.feature_dim <= 0

    @classmethod
    def from_meta(cls, meta: "CheckpointMeta", config=None) -> "ModelAudio":
        """From a checkpoint's meta (cmbert.checkpoint.CheckpointMeta) and its CMBertConfig (None: the meta alone)."""
        feature_set = meta.feature_set or NO_AUDIO
        feature_dim = int(meta.feature_dim or 0)
        if getattr(config, "fusion", None) == TEXT_ONLY:
            feature_set, feature_dim = NO_AUDIO, 0
        missing = meta.missing_audio or "refuse"
        if config is not None and audio_cannot_change_score(config):
            missing = "zeros"
        return cls(feature_set, feature_dim, missing)


def audio_cannot_change_score(config) -> bool:
    """CM-BERT with zero audio at [CLS], kernel-1, bias-free projections and no audio in the attention's values:
    audio never reaches the score."""
    return (getattr(config, "cls_audio", None) == "zero" and not getattr(config, "audio_values", True)
            and getattr(config, "text_kernel", 0) == 1
            and getattr(config, "audio_kernel", 0) == 1 and getattr(config, "proj_bias", True) is False)


def check_compatible(model: ModelAudio, feature_sets: Sequence[tuple[str, int]], what: str = "the utterances"
                     ) -> None:
    """Refuse (``FeatureMismatch``, one line) when the utterances' audio features differ from the checkpoint's.

    ``feature_sets`` are the distinct (feature_set, feature_dim) pairs of the utterances with audio; ``what``
    names them in the message. A text-only model accepts any (it never reads audio).
    """
    if model.text_only:
        return
    for fs, dim in sorted(set(feature_sets)):
        if fs == NO_AUDIO:
            continue
        if fs != model.feature_set or int(dim) != model.feature_dim:
            raise FeatureMismatch(
                f"checkpoint expects audio features {model.feature_set}/{model.feature_dim} but {what} "
                f"have {fs}/{dim}; preprocess with the checkpoint's feature set or score with a matching checkpoint"
            )


def scorable(model: ModelAudio, audio_present: bool, feature_set: str) -> str | None:
    """None when the model can score this row, else why not."""
    if model.text_only or model.missing_audio == "zeros":
        return None
    if not audio_present or feature_set == NO_AUDIO:
        return "audio absent and the checkpoint needs audio (its meta has no missing_audio=zeros)"
    return None


# ---------------------------------------------------------------- which rows a run scores


@dataclass
class WorkPlan:
    """The utterances one run scores: the input files to read and, for files only partly new, which rows."""

    files: list[str]
    partial: dict[str, frozenset[str]]  # file -> the utterance ids to score in it (absent: every row)
    n_input: int  # distinct utterance ids in the input
    n_skipped: int  # already scored by this model version
    n_todo: int
    n_unscorable: int  # audio absent and the checkpoint needs audio
    unscorable_reason: str | None = None


def plan_work(ids: Sequence[str], files: Sequence[str], audio_present: Sequence[bool],
              feature_sets: Sequence[str], done: set[str] | frozenset[str], model: ModelAudio) -> WorkPlan:
    """Decide which rows to score from the input's index columns and the ids already scored.

    An utterance id that occurs twice in the input is scored once (its first file in sorted order), so a run
    never writes an id twice and never writes one that ``done`` holds.
    """
    order = sorted(range(len(ids)), key=lambda i: (files[i], i))
    seen: set[str] = set()
    wanted: dict[str, set[str]] = {}
    rows_per_file: dict[str, int] = {}
    skipped = unscorable = 0
    reason = None
    for i in order:
        f = files[i]
        rows_per_file[f] = rows_per_file.get(f, 0) + 1
        uid = ids[i]
        if uid in seen:
            continue
        seen.add(uid)
        if uid in done:
            skipped += 1
            continue
        why = scorable(model, bool(audio_present[i]), feature_sets[i])
        if why is not None:
            unscorable += 1
            reason = why
            continue
        wanted.setdefault(f, set()).add(uid)
    todo_files = sorted(wanted)
    partial = {f: frozenset(wanted[f]) for f in todo_files if len(wanted[f]) < rows_per_file[f]}
    return WorkPlan(todo_files, partial, len(seen), skipped, sum(len(v) for v in wanted.values()), unscorable, reason)


# ---------------------------------------------------------------- planning a run from its input (reads metadata)

# The input's small columns a run plans with (the words are not read), and the plan's rows (with each row's file).
INDEX_COLUMNS = ["utterance_id", "audio_present", "feature_set", "feature_dim"]
INDEX_SCHEMA = pa.schema([("utterance_id", pa.string()), ("audio_present", pa.bool_()), ("feature_set", pa.string()),
                          ("feature_dim", pa.int32()), ("path", pa.string())])


def feature_sets(uri: str, files: list[str]) -> set[tuple[str, int]]:
    """(feature set, dimension) of the input's utterances with audio, from the files' footers where they tell
    (storage.distinct_tuples), before any work."""
    pairs = storage.distinct_tuples(uri, files, ("feature_set", "feature_dim"), where="audio_present",
                                    required=tuple(INDEX_COLUMNS), kind="an utterances dataset")
    return {(fs, int(dim)) for fs, dim in pairs if fs != NO_AUDIO}


def index_dataset(uri: str, files: list[str]):
    """The input's index columns and the file of each row, as a Ray dataset (the words are not read)."""
    import ray

    src = storage.locate(uri)
    return ray.data.read_parquet(files, filesystem=src.fs, columns=INDEX_COLUMNS, include_paths=True,
                                 partitioning=None, num_cpus=incremental.PLAN_CPUS,
                                 override_num_blocks=min(len(files), 200))


def done_keys(scores_uri: str, model_version: str):
    """Utterance ids this model version has already scored (published files only), as a Ray dataset of
    ``utterance_id`` (None when there are none)."""
    segment = storage.partition_segment("model_version", model_version)
    loc = storage.locate(scores_uri)
    files = [f for f in storage.list_files(scores_uri) if f"/{segment}/" in f[len(loc.path):] + "/"]
    if not files:
        return None
    import ray

    return ray.data.read_parquet(files, filesystem=loc.fs, columns=["utterance_id"], partitioning=None,
                                 num_cpus=incremental.PLAN_CPUS, override_num_blocks=min(len(files), 200))


# ---------------------------------------------------------------- length bucketing and one model pass


@dataclass
class Scorer:
    """A loaded model and what it needs to turn rows into tensors."""

    model: object  # torch.nn.Module whose forward(...) returns an object with .score (B,)
    tokenizer: object
    max_len: int
    audio_dim: int
    collate: Callable  # collate(rows, tokenizer, max_len, audio_dim) -> dict of tensors
    device: str = "cpu"
    batch_size: int = 32
    lengths: Callable | None = None  # lengths(rows, tokenizer, max_len) -> word-pieces per row
    precision: str = "fp32"  # bf16: autocast the matmuls (GPUs; CPUs with native bf16)

    def forward(self, rows: list[dict]) -> np.ndarray:
        import torch

        batch = self.collate(rows, self.tokenizer, self.max_len, self.audio_dim)
        device_type = torch.device(self.device).type
        with torch.inference_mode(), torch.autocast(device_type, torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(input_ids=batch["input_ids"].to(self.device),
                             attention_mask=batch["attention_mask"].to(self.device),
                             audio=batch["audio"].to(self.device))
        return out.score.detach().float().cpu().numpy().reshape(-1)


def score_rows(rows: list[dict], scorer: Scorer, lengths: Sequence[int] | None = None
               ) -> tuple[np.ndarray, list[str | None]]:
    """Raw scores for ``rows`` in their order (NaN where a row failed) and each row's error (or None).

    Rows are grouped by token length; a batch that fails is retried row by row so one bad row
    fails alone.
    """
    if lengths is None:
        lengths = scorer.lengths(rows, scorer.tokenizer, scorer.max_len)
    scores = np.full(len(rows), np.nan, dtype=np.float32)
    errors: list[str | None] = [None] * len(rows)
    for idx in length_buckets(lengths, scorer.batch_size):
        try:
            scores[idx] = scorer.forward([rows[i] for i in idx])
            continue
        except Exception:  # retry alone: find the row that breaks the batch
            if len(idx) == 1:
                errors[idx[0]] = _reason()
                continue
        for i in idx:
            try:
                scores[i] = scorer.forward([rows[i]])[0]
            except Exception:
                errors[i] = _reason()
    for i, s in enumerate(scores):
        if errors[i] is None and not math.isfinite(float(s)):
            errors[i] = "model returned a non-finite score"
    return scores, errors


def _reason() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return lines[-1][:300] if lines else "unknown error"


@dataclass(frozen=True)
class ScoreStamp:
    """What every score row of a run carries besides its score."""

    model_id: str
    model_version: str
    run_id: str
    score_date: str  # YYYY-MM-DD


def score_records(rows: list[dict], scores: Sequence[float], errors: Sequence[str | None], stamp: ScoreStamp,
                  scored_at: dt.datetime) -> list[dict]:
    """Rows in SCORE_RESULT_SCHEMA form: SCORES_SCHEMA columns, plus ``error`` (score null) for failed rows.

    Each row carries its utterance's ``source`` and manifest ``extra`` columns, so a score names its video."""
    out = []
    for row, raw, err in zip(rows, scores, errors):
        rec = {c: row.get(c) for c in CARRIED_COLUMNS}
        rec |= {
            "model_id": stamp.model_id, "model_version": stamp.model_version, "run_id": stamp.run_id,
            "scored_at": scored_at, "score_date": stamp.score_date, "error": err,
            "score": None, "polarity": None, "label7": None,
        }
        if err is None:
            s = clip_score(float(raw))
            rec.update(score=s, polarity=polarity(s), label7=label7(s))
        out.append(rec)
    return out


def without_audio(row: dict) -> dict:
    """The row with its word features dropped (what a text-only model sees: zero audio)."""
    words = [{**w, "features": None} for w in row.get("words") or []]
    return {**row, "words": words}


def keep_rows(paths: Sequence[str] | None, ids: Sequence[str], partial: dict[str, frozenset[str]]) -> list[int]:
    """Indices of rows to score: every row of a fully new file, the planned ids of a partly new one."""
    if not partial or paths is None:
        return list(range(len(ids)))
    return [i for i, (p, u) in enumerate(zip(paths, ids)) if p not in partial or u in partial[p]]


# ---------------------------------------------------------------- Ray Data wrapper


def materialize_checkpoint(options: "StageOptions") -> str:
    """A local folder holding the checkpoint: its own path when local, else a copy cached per URI and model version
    (a URI such as ``.../current`` gets new weights over time) for the life of the machine.

    ``options.location`` carries the filesystem the driver resolved (it pickles with its endpoint and credentials),
    so actors need no AWS environment of their own.
    """
    if options.location is None:
        return options.checkpoint
    return storage.local_copy(options.location, f"{options.checkpoint}|{options.stamp.model_version}",
                              under="cmbert-checkpoints")


@dataclass(frozen=True)
class StageOptions:
    checkpoint: str  # local folder or s3:// URI, as the user wrote it
    stamp: ScoreStamp
    location: storage.Location | None = None  # where the checkpoint is, resolved by the driver (None: local)
    partial: dict[str, frozenset[str]] = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 32
    torch_threads: int = 1
    precision: str = "fp32"


class ScoreStage:
    """Callable class for ``map_batches``: loads the checkpoint once, maps utterance rows to score rows."""

    def __init__(self, options: StageOptions):
        import torch

        from cmbert.checkpoint import load_checkpoint
        from cmbert.collate import collate, token_lengths

        if options.device == "cpu":
            torch.set_num_threads(options.torch_threads)  # fractional-CPU actors: no oversubscription
        self.options = options
        local = materialize_checkpoint(options)
        lm = load_checkpoint(local)
        if lm.meta.model_version != options.stamp.model_version:  # replaced since the driver planned the run
            raise RuntimeError(f"checkpoint {options.checkpoint} changed during the run "
                               f"({options.stamp.model_version} -> {lm.meta.model_version}); run again")
        lm.model.to(options.device).eval()
        self.audio = ModelAudio.from_meta(lm.meta, lm.config)
        self.scorer = Scorer(lm.model, lm.tokenizer, lm.config.max_len, lm.config.audio_dim, collate,
                             options.device, options.batch_size, token_lengths, options.precision)

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch.column("path").to_pylist() if "path" in batch.column_names else None
        keep = keep_rows(paths, batch.column("utterance_id").to_pylist(), self.options.partial)
        if len(keep) < batch.num_rows:
            batch = batch.take(pa.array(keep, pa.int64()))  # typed: an empty list would infer null
        rows = batch.select([c for c in INPUT_COLUMNS if c in batch.column_names]).to_pylist()
        if self.audio.text_only:
            rows = [without_audio(r) for r in rows]
        # The plan leaves out rows this checkpoint cannot score (and counts them); never score one that slips in.
        rows = [r for r in rows if scorable(self.audio, r["audio_present"], r["feature_set"]) is None]
        scores, errors = score_rows(rows, self.scorer) if rows else (np.zeros(0, np.float32), [])
        now = dt.datetime.now(dt.timezone.utc)
        kill_point("score")  # tests only: inert unless CMBERT_TEST_KILL is set (cmbert/faults.py)
        return pa.Table.from_pylist(score_records(rows, scores, errors, self.options.stamp, now),
                                    schema=SCORE_RESULT_SCHEMA)
