"""The committed demo corpus (tests/fixtures/corpus, made by tests/fixtures/make_corpus.py) for audio tests."""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

import numpy as np

from cmbert.audio.decode import decode_audio

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"

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
