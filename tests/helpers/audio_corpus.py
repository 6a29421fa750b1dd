"""The committed demo corpus (tests/fixtures/corpus, made by tests/fixtures/make_corpus.py) for audio tests."""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

import numpy as np

from cmbert.audio.decode import decode_audio
from tests.helpers import CORPUS

# Transcripts of the clips that manifest.csv leaves without text (the ASR path), for WER checks.
UNLISTED_TEXT = {
    "dirty_hotel.webm": "The hotel room was dirty and the staff were rude. We will never stay there again.",
    "great_value.flac": "Great value for the price. It works perfectly and I am very happy.",
}
# two_speakers.wav: voices take turns male, female, male; the turns' words.
TWO_SPEAKER_TURNS = (
    "The new phone is fantastic.",
    "Really? I found it slow and frustrating.",
    "The screen is beautiful though.",
)


@functools.cache
def manifest() -> dict[str, dict]:
    with open(CORPUS / "manifest.csv", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


@functools.cache
def clip(name: str) -> np.ndarray:
    """Decoded float32 mono 16 kHz samples of a corpus clip (read-only)."""
    audio = decode_audio((CORPUS / name).read_bytes())
    audio.setflags(write=False)
    return audio


def normalise(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes kept), for WER."""
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def majority_speakers(speech, turns) -> list[str]:
    """The speaker who covers most of each speech region (``turns`` with .start, .end, .speaker)."""
    majority = []
    for s, e in speech:
        cover: dict[str, float] = {}
        for t in turns:
            cover[t.speaker] = cover.get(t.speaker, 0.0) + max(0.0, min(e, t.end) - max(s, t.start))
        majority.append(max(cover, key=cover.get))
    return majority


def call_der(call_dir, turns, seconds: float, collar: float) -> float:
    """Frame DER of ``turns`` against the call's reference RTTM (overlap scored, pyannote.metrics)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for f in map(str.split, open(Path(call_dir) / "sample.rttm")):
        ref[Segment(float(f[3]), float(f[3]) + float(f[4]))] = f[7]
    for t in turns:
        hyp[Segment(t.start, t.end)] = t.speaker
    return DiarizationErrorRate(collar=collar)(ref, hyp, uem=Timeline([Segment(0, seconds)]))
