"""A bad-input corpus for preprocess, generated at test time (nothing large is committed).

``make_bad_corpus(root)`` writes media files and a manifest under ``root`` and returns the cases: for each
manifest row, what the job must do with it (process it, or reject it at a stage with a reason). Speech comes
from the committed demo corpus (tests/fixtures/corpus), re-encoded to odd formats; silence, noise, a tone
and broken containers are made here. Everything is short: the whole corpus is about 2 MB and decodes in
seconds.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf
from scipy.signal import resample_poly

from tests.helpers.audio_corpus import CORPUS, clip, manifest
from tests.helpers.media import pyav_bytes

MAX_CLIP_SECONDS = 90.0  # the job is run with --max-clip-seconds 90: long.flac (100 s) is over it

CYRILLIC = "Это был чудесный опыт, я с радостью порекомендую его всем друзьям."
CJK = "酒店房间很脏，工作人员很粗鲁。我们再也不会住在那里了。"


@dataclass(frozen=True)
class Case:
    name: str  # what the row tests
    file: str  # the manifest's file column
    text: str
    label: str
    stage: str | None  # None: processed; else the reject's stage
    reason: str = ""  # a phrase the reject reason must contain
    words_source: str | None = None  # for processed rows: align | asr | spread
    label_out: float | None = None  # the label the utterances must carry


def _wav(audio: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def make_bad_corpus(root: Path, tmp: Path) -> list[Case]:
    root.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    text = {name: row["text"] for name, row in manifest().items()}
    rng = np.random.default_rng(6)

    # Good speech in awkward formats and under awkward names (different bytes each: a clip is named by its hash).
    speech = clip("terrible_film.wav")  # 16 kHz mono
    low = resample_poly(speech, 1, 2).astype(np.float32)  # 8 kHz
    (root / "my clip (1).wav").write_bytes(_wav(np.stack([low, 0.7 * low], axis=1), 8000))
    high = resample_poly(clip("bellanova.flac"), 3, 1).astype(np.float32)  # 48 kHz
    six = np.stack([high * g for g in (0.9, 0.8, 0.6, 0.0, 0.5, 0.5)], axis=1)  # 5.1 with a silent LFE
    (root / "ünïcødé 日本 clip.flac").write_bytes(_wav(six, 48000, "FLAC"))
    shutil.copy(CORPUS / "battery.ogg", root / "-leading dash.ogg")
    shutil.copy(CORPUS / "loved_it.mp4", root / "loved_it.mp4")
    for name in ("wonderful.m4a", "dirty_hotel.webm", "great_value.flac", "two_speakers.wav"):
        shutil.copy(CORPUS / name, root / name)

    # Broken or speechless media.
    mp4 = (CORPUS / "loved_it.mp4").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(mp4[: len(mp4) // 3])
    (root / "random.mp4").write_bytes(rng.bytes(30000))
    (root / "no_audio.mp4").write_bytes(pyav_bytes(tmp, None, 0, "mp4", None, video_seconds=1.0))
    t = np.arange(100 * 8000) / 8000
    (root / "long.flac").write_bytes(_wav((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 8000, "FLAC"))
    (root / "silence.flac").write_bytes(_wav(np.zeros(60 * 16000, np.float32), 16000, "FLAC"))
    (root / "noise.wav").write_bytes(_wav((0.1 * rng.standard_normal(8 * 16000)).astype(np.float32), 16000))

    cases = [
        Case("8 kHz stereo, file name with spaces and parentheses", "my clip (1).wav",
             text["terrible_film.wav"], "-3", None, words_source="align", label_out=-3.0),
        Case("48 kHz 6-channel FLAC, unicode file name", "ünïcødé 日本 clip.flac",
             text["bellanova.flac"], "1", None, words_source="align", label_out=1.0),
        Case("empty transcript (ASR instead), file name with a leading dash", "-leading dash.ogg",
             "", "-1", None, words_source="asr", label_out=-1.0),
        Case("label NaN (no label)", "loved_it.mp4", text["loved_it.mp4"], "NaN", None,
             words_source="align", label_out=None),
        Case("transcript in Cyrillic", "wonderful.m4a", CYRILLIC, "2", "words", "no pronounceable words"),
        Case("transcript in Chinese", "dirty_hotel.webm", CJK, "-2", "words", "no pronounceable words"),
        Case("label is text", "great_value.flac", "", "positive", "manifest", "not a number"),
        Case("label out of range", "two_speakers.wav", text["two_speakers.wav"], "7", "manifest",
             "outside [-3.0, 3.0]"),
        Case("zero-byte file", "empty.mp4", "", "", "decode", "empty input (0 bytes)"),
        Case("truncated mp4", "truncated.mp4", "", "", "decode", "truncated"),
        Case("random bytes named .mp4", "random.mp4", "", "", "decode", "not a readable media file"),
        Case("video without an audio stream", "no_audio.mp4", "", "", "decode", "no audio stream"),
        Case(f"clip over --max-clip-seconds {MAX_CLIP_SECONDS:g}", "long.flac", "", "", "decode", "too long"),
        Case("60 s of silence", "silence.flac", "", "", "vad", "no speech found"),
        Case("noise only", "noise.wav", "", "", "vad", "no speech found"),
        Case("manifest names a missing file", "missing.wav", "hello", "1", "read", "file does not exist"),
        Case("path escaping the input root (..)", "../outside.wav", "hello", "1", "manifest",
             "outside the input root"),
        Case("absolute path", "/etc/passwd", "", "", "manifest", "outside the input root"),
        Case("URI to another bucket", "s3://other-bucket/x.wav", "", "", "manifest", "outside the input root"),
    ]
    rows = [{"file": c.file, "text": c.text, "label": c.label} for c in cases]
    rows.append(dict(rows[0]))  # a repeated row: a row of its own, so one more utterance (no merge, no loss)
    pl.DataFrame(rows).write_csv(root / "manifest.csv")
    return cases
