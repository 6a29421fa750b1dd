"""THE data model: Clip, ClipTask, Word, Utterance, Reject.

Times are seconds from the start of the clip. Ids are deterministic, so a rerun produces the same ids and
overwrites instead of duplicating: a clip is named by the hash of its bytes (or, for a text-only manifest row,
of its text). An annotated manifest row (a transcript or a label) is one utterance, never split or merged: it is
named by its clip id plus its row key (``row_key``), so two rows with the same transcript or the same file stay
two. The utterances of an unannotated clip, which the pipeline splits, are named by clip id plus start in ms.
Large arrays (audio) are referenced by ``Clip.source``; small vectors (per-word features) are inline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ID_HEX = 16  # 64 bits of sha256: collisions are negligible for corpora of millions of clips


def content_id(data: bytes) -> str:
    """Clip id from the clip's bytes."""
    return hashlib.sha256(data).hexdigest()[:ID_HEX]


def text_id(text: str) -> str:
    """Clip id for a text-only row (no audio): the hash of its text."""
    return hashlib.sha256(b"text:" + text.encode("utf-8")).hexdigest()[:ID_HEX]


def source_id(source: str) -> str:
    """Id for a source whose bytes could not be read (missing file): the hash of its name."""
    return hashlib.sha256(b"source:" + source.encode("utf-8")).hexdigest()[:ID_HEX]


ROW_HEX = 12  # a row key only has to tell apart the rows that share one clip id


def _ms(seconds: float | None) -> int:
    return -1 if seconds is None else int(round(seconds * 1000))


def row_key(file: str | None, text: str | None, start: float | None, end: float | None, occurrence: int) -> str:
    """The identity of an annotated manifest row: what it names (file, transcript, segment) and which occurrence
    of that it is in the manifest (0 for the first). Labels and other columns are not part of it, so correcting a
    label does not make a new row; reordering rows changes no key except between rows that name the same thing."""
    named = "\x1f".join((file or "", text or "", str(_ms(start)), str(_ms(end)), str(occurrence)))
    return hashlib.sha256(b"row:" + named.encode("utf-8")).hexdigest()[:ROW_HEX]


def utterance_id(clip_id: str, start: float | None, row: str | None = None) -> str:
    """A whole manifest row's one utterance: clip id + row key; else clip id + start in ms."""
    if row is not None:
        return f"{clip_id}-r{row}"
    start_ms = 0 if start is None else int(round(start * 1000))
    return f"{clip_id}-{start_ms:09d}"


def task_id(clip_id: str, start: float | None = None, end: float | None = None, row: str | None = None) -> str:
    """The unit of incremental work: an annotated manifest row (same id as its one utterance), a whole clip, or
    an unannotated manifest segment of a clip."""
    if row is not None:
        return utterance_id(clip_id, start, row)
    if start is None and end is None:
        return clip_id
    return f"{clip_id}-{_ms(start)}-{_ms(end)}"


@dataclass(frozen=True)
class Clip:
    """One unit of input: a media file (or a segment of it), or a text-only manifest row."""

    clip_id: str
    source: str  # path relative to the input root, or "manifest:ROW" for text-only rows
    text: str | None = None  # known transcript -> forced alignment; None -> ASR
    label: float | None = None
    start: float | None = None  # segment bounds from the manifest, seconds
    end: float | None = None
    extra: tuple[tuple[str, str], ...] = ()  # other manifest columns, as text
    row: str | None = None  # row key of an annotated manifest row: the clip is that row, one utterance

    @property
    def task_id(self) -> str:
        return task_id(self.clip_id, self.start, self.end, self.row)

    @property
    def whole(self) -> bool:
        """One utterance, never split: an annotated clip (a transcript or a label), or a manifest segment."""
        return (self.row is not None or bool(self.text) or self.label is not None
                or self.start is not None or self.end is not None)

    @property
    def has_audio(self) -> bool:
        return not self.source.startswith("manifest:")


@dataclass(frozen=True)
class ClipTask:
    """One planned unit of preprocess work on its way to a worker: a media file or a segment of it (``media``), a
    text-only manifest row (``text``), or a row planning already rejected (``reject``, with ``stage`` and
    ``reason``). A row of ``schemas.CLIP_TASK_SCHEMA`` (``to_row`` / ``from_row``): values arrive as they left.

    ``task_id`` and ``clip_id`` name it by content, what the skip-set is keyed on: planning names text rows and
    rejects; ``cmbert.stages.identify_tasks`` names media by the hash of their bytes (None until then)."""

    kind: str  # media | text | reject
    source: str  # as Clip.source
    text: str | None = None
    label: float | None = None
    start: float | None = None
    end: float | None = None
    extra: tuple[tuple[str, str], ...] = ()
    row: str | None = None  # the annotated manifest row's key (Clip.row)
    task_id: str | None = None
    clip_id: str | None = None
    stage: str | None = None  # rejects only
    reason: str | None = None
    order: int = 0  # position in the plan: of two tasks with one id, the first is kept

    def clip(self, clip_id: str) -> Clip:
        """The Clip this task is, once its content named it."""
        return Clip(clip_id, self.source, self.text or None, self.label, self.start, self.end, self.extra, self.row)

    def reject(self) -> Reject:
        return Reject(self.task_id, self.clip_id, self.source, self.stage, self.reason)

    @classmethod
    def of_reject(cls, reject: Reject) -> ClipTask:
        return cls("reject", reject.source, task_id=reject.task_id, clip_id=reject.clip_id, stage=reject.stage,
                   reason=reject.reason)

    def to_row(self) -> dict:
        """A dict matching ``schemas.CLIP_TASK_SCHEMA``."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__} | {"extra": list(self.extra)}

    @classmethod
    def from_row(cls, row: dict) -> ClipTask:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__} | {"extra": tuple(map(tuple, row["extra"] or ()))})


@dataclass(frozen=True)
class Word:
    word: str
    start: float | None  # None when audio is absent
    end: float | None
    speaker: str | None = None
    features: tuple[float, ...] | None = None  # LLDs averaged over [start, end]


NO_AUDIO = "none"  # the feature_set of an utterance without audio features (stored as is: existing data has it)


@dataclass(frozen=True)
class Utterance:
    clip_id: str
    task_id: str
    source: str
    speaker: str | None
    start: float | None
    end: float | None
    text: str
    words: tuple[Word, ...]
    words_source: str  # align | asr | text
    feature_set: str  # name of the acoustic feature set, NO_AUDIO when audio is absent
    feature_dim: int
    label: float | None = None
    extra: tuple[tuple[str, str], ...] = ()
    row: str | None = None  # the annotated manifest row this utterance is (Clip.row)

    @property
    def utterance_id(self) -> str:
        return utterance_id(self.clip_id, self.start, self.row)

    @property
    def audio_present(self) -> bool:
        return self.feature_dim > 0 and any(w.features is not None for w in self.words)

    def to_row(self, run_id: str, created_at) -> dict:
        """A dict matching ``schemas.UTTERANCES_SCHEMA``."""
        return {
            "utterance_id": self.utterance_id,
            "task_id": self.task_id,
            "clip_id": self.clip_id,
            "source": self.source,
            "speaker": self.speaker,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "label": self.label,
            "words": [
                {
                    "word": w.word,
                    "start": w.start,
                    "end": w.end,
                    "speaker": w.speaker,
                    "features": None if w.features is None else list(w.features),
                }
                for w in self.words
            ],
            "words_source": self.words_source,
            "audio_present": self.audio_present,
            "feature_set": self.feature_set,
            "feature_dim": self.feature_dim,
            "extra": list(self.extra),
            "run_id": run_id,
            "created_at": created_at,
        }


@dataclass(frozen=True)
class Reject:
    """A clip (or segment) that could not be processed, and why. The job goes on without it."""

    task_id: str
    clip_id: str
    source: str
    stage: str
    reason: str

    def to_row(self, run_id: str, created_at) -> dict:
        return {
            "task_id": self.task_id,
            "clip_id": self.clip_id,
            "source": self.source,
            "stage": self.stage,
            "reason": self.reason,
            "run_id": run_id,
            "created_at": created_at,
        }


@dataclass
class StageError(Exception):
    """Raised by a pure stage function for bad input; the wrapper turns it into a Reject row."""

    stage: str
    reason: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.reason}"


