"""One clip from bytes to utterances: the pure composition of the audio stages (no Ray, no I/O).

decode -> speech activity -> diarization -> words (forced alignment or ASR) -> speakers per word
-> utterances -> word-level acoustic features. Model objects are passed in (loaded once per actor by
``cmbert.stages``); bad input raises ``StageError`` naming the stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from cmbert.audio.decode import SAMPLE_RATE, decode_audio
from cmbert.audio.diarize import (
    DiarizeParams,
    PyannoteRun,
    Turn,
    assign_speakers,
    diarize,
    diarize_pyannote,
    diarize_single,
)
from cmbert.audio.features import DEFAULT_BACKEND, word_features
from cmbert.audio.utterances import SplitParams, split_utterances
from cmbert.audio.vad import LevelParams, VadParams, boost_quiet, detect_energy, detect_speech
from cmbert.audio.words import WordParams, align_words, spread_words, transcribe
from cmbert.manifest import NO_AUDIO, Clip, StageError, Utterance, Word

SINGLE_SPEAKER = "none"  # the diarizer that finds no turns: one speaker per clip
DIARIZERS = ("auto", "pyannote", "dvector", SINGLE_SPEAKER)
DEFAULT_DIARIZER = "pyannote"  # what "auto" runs: the better on DER (bench/bench_diarize.py, README)
WORD_MODES = ("auto", "align", "asr")


@dataclass(frozen=True)
class ClipParams:
    """Every option of the clip pipeline, each with its one default: what the user chooses (preprocess has a flag
    of the same name for each of the first group, and ``from_config`` takes them by name) and the stages'
    tuned thresholds (no flags)."""

    diarizer: str = "auto"  # auto: DEFAULT_DIARIZER; pyannote; dvector: VAD + d-vectors + clustering; none: one speaker
    diarizer_model: str | None = None  # pyannote pipeline path or hub id; None: bundled segmentation-3.0 + CAM++
    num_speakers: int | None = None  # None: automatic
    words: str = "auto"  # auto: align when a transcript is known, else ASR (``words_mode``)
    asr_model: str | None = None  # faster-whisper size or path; None: bundled tiny.en
    features: str = DEFAULT_BACKEND
    feature_model: str | None = None  # whisper features: a CTranslate2 whisper path; None: bundled tiny.en
    max_clip_seconds: float = 3 * 3600.0
    gpu: bool = False  # models on the GPU (ASR, speaker embeddings, whisper features)

    vad: VadParams = field(default_factory=VadParams)
    level: LevelParams = field(default_factory=LevelParams)
    diarize: DiarizeParams = field(default_factory=DiarizeParams)
    word: WordParams = field(default_factory=WordParams)
    split: SplitParams = field(default_factory=SplitParams)

    @classmethod
    def from_config(cls, config) -> ClipParams:
        """The options a job config holds, by name: a config field named as a ClipParams field is that option."""
        names = {f.name for f in fields(config)}
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if f.name in names})

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"


@dataclass
class ClipModels:
    """Everything a worker loads once. Unused members stay None (e.g. no ASR when all clips have text)."""

    vad: object
    features: object  # has .name, .dim
    speaker_encoder: object | None = None
    aligner: object | None = None
    asr: object | None = None
    pyannote: object | None = None  # a pyannote.audio pipeline (the bundled one unless --diarizer-model)


@dataclass(frozen=True)
class ClipResult:
    utterances: list[Utterance]
    audio_seconds: float


def words_mode(clip: Clip, params: ClipParams) -> str:
    """Where a clip's words come from: ``align`` (a known transcript) or ``asr``. The one rule: workers load the
    models it names, and ``process_clip`` runs it."""
    if params.words == "auto":
        return "align" if clip.text else "asr"
    return params.words


def process_clip(data: bytes, clip: Clip, models: ClipModels, params: ClipParams) -> ClipResult:
    """All utterances of one clip (or manifest segment). Times are seconds from the clip's start."""
    audio = decode_audio(data, max_seconds=params.max_clip_seconds, start=clip.start, end=clip.end)
    offset = clip.start or 0.0
    seconds = len(audio) / SAMPLE_RATE
    heard = boost_quiet(audio, params.level)  # quiet speech raised for detection and words; features keep `audio`
    speech = find_speech(heard, clip, models, params)
    turns = speaker_turns(heard, speech, models, params)

    mode = words_mode(clip, params)
    if mode == "align" and not clip.text:
        raise StageError("words", "--words align needs a transcript, and this clip has none")
    if mode == "align":
        try:
            words = align_words(heard, clip.text, models.aligner, params.word)
        except StageError as exc:
            if "alignment failed" not in exc.reason:
                raise
            words, mode = spread_words(clip.text, speech, params.word), "spread"
    else:
        words = transcribe(heard, models.asr, params.word)
    if not words:
        raise StageError("words", "no words found in the speech")
    words = assign_speakers(words, turns)

    # An annotated row or a segment is one utterance: its label belongs to all of it. Unannotated clips are split.
    segment = clip.start is not None or clip.end is not None
    groups = [words] if clip.whole else split_utterances(words, turns, params.split)
    vectors = word_features(audio, words, models.features)
    feats = {id(w): tuple(float(x) for x in v) for w, v in zip(words, vectors)}

    utterances = []
    for group in groups:
        if not group:
            continue
        timed = tuple(
            Word(w.word, w.start + offset, w.end + offset, w.speaker, feats.get(id(w))) for w in group
        )
        utterances.append(
            Utterance(
                clip_id=clip.clip_id,
                task_id=clip.task_id,
                source=clip.source,
                speaker=majority_speaker(group),
                start=(clip.start if segment else timed[0].start),
                end=(clip.end if segment and clip.end is not None else timed[-1].end),
                text=clip.text if clip.whole and clip.text else " ".join(w.word for w in group),
                words=timed,
                words_source=mode,
                feature_set=models.features.name,
                feature_dim=models.features.dim,
                label=clip.label,
                extra=clip.extra,
                row=clip.row,
            )
        )
    return ClipResult(utterances, seconds)


def find_speech(audio: np.ndarray, clip: Clip, models: ClipModels, params: ClipParams) -> list[tuple[float, float]]:
    """Silero VAD; when it finds nothing but a transcript says there is speech, loud regions by frame energy."""
    try:
        return detect_speech(audio, models.vad, params.vad)
    except StageError:
        if not clip.text:
            raise
        return detect_energy(audio)


def diarizer_name(params: ClipParams) -> str:
    return DEFAULT_DIARIZER if params.diarizer == "auto" else params.diarizer


def speaker_turns(audio: np.ndarray, speech, models: ClipModels, params: ClipParams) -> list[Turn]:
    from dataclasses import replace

    name = diarizer_name(params)
    if name == SINGLE_SPEAKER:
        return diarize_single(speech)
    if name == "pyannote":
        return diarize_pyannote(audio, models.pyannote, PyannoteRun(num_speakers=params.num_speakers), speech)
    dparams = params.diarize
    if params.num_speakers is not None:
        dparams = replace(dparams, num_speakers=params.num_speakers)
    return diarize(audio, speech, models.speaker_encoder, dparams)


def majority_speaker(words) -> str | None:
    """The speaker who says the most of an utterance (by time)."""
    spoken: dict[str, float] = {}
    for w in words:
        if w.speaker is not None:
            spoken[w.speaker] = spoken.get(w.speaker, 0.0) + max(w.end - w.start, 1e-3)
    return max(spoken, key=spoken.get) if spoken else None


def text_utterance(clip: Clip) -> Utterance:
    """A manifest row without audio: words without times, audio features absent."""
    words = tuple(Word(token, None, None) for token in clip.text.split())
    return Utterance(
        clip_id=clip.clip_id,
        task_id=clip.task_id,
        source=clip.source,
        speaker=None,
        start=None,
        end=None,
        text=clip.text,
        words=words,
        words_source="text",
        feature_set=NO_AUDIO,
        feature_dim=0,
        label=clip.label,
        extra=clip.extra,
        row=clip.row,
    )
