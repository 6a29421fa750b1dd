"""Split a clip's timed words into utterances: at speaker changes, sentence ends and long pauses."""

from __future__ import annotations

from dataclasses import dataclass

from cmbert.audio.diarize import Turn, assign_speakers
from cmbert.manifest import Word


@dataclass(frozen=True)
class SplitParams:
    max_pause_seconds: float = 1.0  # a longer silence between two words starts a new utterance
    max_utterance_seconds: float = 20.0  # a longer utterance is cut before the word that would pass it
    sentence_end: str = ".?!\u2026"  # a word ending in one of these (before closing quotes) ends an utterance
    split_at_sentence_end: bool = True


_CLOSERS = "\"')]}\u201d\u2019"


def _ends_sentence(word: str, marks: str) -> bool:
    return word.rstrip(_CLOSERS)[-1:] in marks if word.rstrip(_CLOSERS) else False


def split_utterances(words: list[Word], turns: list[Turn], params: SplitParams = SplitParams()) -> list[list[Word]]:
    """Words grouped into utterances, in order; each word carries its speaker.

    A word without a speaker takes the turn that overlaps it most (``assign_speakers``). Words
    without times (text-only rows) split at sentence ends only.
    """
    if not words:
        return []
    if turns and any(w.speaker is None for w in words):
        words = [w if w.speaker is not None else a for w, a in zip(words, assign_speakers(words, turns))]
    utterances: list[list[Word]] = []
    current: list[Word] = []
    for w in words:
        if current:
            prev = current[-1]
            timed = None not in (w.start, w.end, prev.end, current[0].start)
            if (
                w.speaker != prev.speaker
                or (params.split_at_sentence_end and _ends_sentence(prev.word, params.sentence_end))
                or (timed and w.start - prev.end > params.max_pause_seconds)
                or (timed and w.end - current[0].start > params.max_utterance_seconds)
            ):
                utterances.append(current)
                current = []
        current.append(w)
    utterances.append(current)
    return utterances


def utterance_text(words: list[Word]) -> str:
    """The utterance's text: its words joined by single spaces (spellings as transcribed)."""
    return " ".join(w.word for w in words)

