"""Word-level acoustic features, as in CM-BERT: frame-level low-level descriptors (LLDs) averaged
over each word's [start, end] span.

LLDs are computed once per clip; each word then averages the frames whose centres fall in its span
(a word too short to hold a frame centre takes the nearest frame). NaNs from the extractor are
ignored in the average and any left become 0, so the vectors are always finite.

Backends (``load_features(name)``; the jobs' default is ``DEFAULT_BACKEND``):
  egemaps  openSMILE eGeMAPSv02 LLDs, 25 dims, 10 ms hop (the paper's recipe; audEERING licence: research,
           non-commercial)
  compare  openSMILE ComParE_2016 LLDs, 65 dims, 10 ms hop (same licence)
  mfcc     permissive (ISC librosa + numpy): 13 MFCCs, log F0 (YIN), log RMS energy, zero-crossing
           rate: 16 dims, 10 ms hop
  whisper  permissive (MIT): the output of whisper's audio encoder (bundled tiny.en: 384 dims, 20 ms hop),
           a learned representation that carries far more of the voice's affect than the LLDs
           (bench/bench_ravdess.py: binary valence on unseen speakers); the default
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from cmbert.audio.decode import SAMPLE_RATE
from cmbert.manifest import StageError, Word

_STAGE = "features"
BACKENDS = ("egemaps", "compare", "mfcc", "whisper")
DEFAULT_BACKEND = "whisper"  # what lets CM-BERT hear (README: RAVDESS valence), MIT, cheaper than eGeMAPS


@dataclass(frozen=True)
class FeatureParams:
    # mfcc backend only; the openSMILE sets are fixed by their config files.
    n_mfcc: int = 13
    hop_seconds: float = 0.01
    win_seconds: float = 0.025
    f0_min: float = 60.0
    f0_max: float = 500.0


class OpenSmileLLD:
    """An openSMILE LLD extractor; frame times are the centres of openSMILE's windows."""

    def __init__(self, name: str, feature_set):
        import opensmile

        self.name = name
        self._smile = opensmile.Smile(feature_set=feature_set, feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        self.dim = len(self._smile.feature_names)

    def frames(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(times (N,), values (N, dim)) for a float32 mono 16 kHz clip."""
        with warnings.catch_warnings():  # "Segment too short, filling with NaN": handled below
            warnings.simplefilter("ignore", UserWarning)
            df = self._smile.process_signal(audio, SAMPLE_RATE)
        start = df.index.get_level_values("start").total_seconds().to_numpy()
        end = df.index.get_level_values("end").total_seconds().to_numpy()
        return (start + end) / 2, df.to_numpy(dtype=np.float32)


class MfccLLD:
    """Permissively licensed LLDs: MFCCs, log F0, log energy, zero-crossing rate (16 dims by default)."""

    def __init__(self, params: FeatureParams = FeatureParams()):
        self.params = params
        self.name = f"mfcc{params.n_mfcc}_f0_energy_zcr"
        self.dim = params.n_mfcc + 3

    def frames(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import librosa

        p = self.params
        hop = int(round(p.hop_seconds * SAMPLE_RATE))
        win = int(round(p.win_seconds * SAMPLE_RATE))
        n_fft = 1 << (win - 1).bit_length()
        y = np.ascontiguousarray(audio, dtype=np.float32)
        if y.size < n_fft:
            y = np.pad(y, (0, n_fft - y.size))
        mfcc = librosa.feature.mfcc(y=y, sr=SAMPLE_RATE, n_mfcc=p.n_mfcc, n_fft=n_fft, win_length=win,
                                    hop_length=hop, n_mels=40)  # fmt: skip  (n_mfcc, N)
        f0_frame = max(2048, n_fft)  # YIN needs at least two periods of f0_min
        y0 = np.pad(y, (0, max(0, f0_frame - y.size)))
        f0 = librosa.yin(y0, fmin=p.f0_min, fmax=p.f0_max, sr=SAMPLE_RATE, frame_length=f0_frame, hop_length=hop)
        rms = librosa.feature.rms(y=y, frame_length=win, hop_length=hop)[0]
        zcr = librosa.feature.zero_crossing_rate(y, frame_length=win, hop_length=hop)[0]
        n = min(mfcc.shape[1], f0.size, rms.size, zcr.size)
        values = np.column_stack([mfcc[:, :n].T, np.log(f0[:n]), np.log(rms[:n] + 1e-5), zcr[:n]])  # (N, dim)
        times = np.arange(n) * p.hop_seconds  # librosa centres frame i at i * hop
        return times, values.astype(np.float32)


class WhisperEncoderFrames:
    """Whisper's audio-encoder states as frames: one vector per 20 ms (the encoder halves the 10 ms mel hop).

    The clip's log-mel is encoded in windows of at most 30 s (the encoder's positional range) without padding
    short clips to 30 s: the CTranslate2 encoder accepts shorter inputs, which is ~15x cheaper on the
    seconds-long utterances of review clips and, on RAVDESS, as informative (bench/bench_ravdess.py).
    """

    MEL_HOP_SECONDS = 0.01
    WINDOW_MEL_FRAMES = 3000  # 30 s

    def __init__(self, model_path: str | None = None, device: str = "cpu", cpu_threads: int = 1):
        import os

        from cmbert.audio.words import load_asr

        self._whisper = load_asr(model_path, device=device, cpu_threads=cpu_threads)
        model = "tiny.en" if model_path is None else os.path.basename(str(model_path).rstrip("/")) or str(model_path)
        probe = self._encode(self._whisper.feature_extractor(np.zeros(1600, np.float32)))  # 0.1 s of silence
        self.dim = int(probe.shape[-1])
        self.name = f"whisper_{model}_encoder{self.dim}"

    @property
    def whisper(self):
        """The loaded faster-whisper model (its ASR can share it: cmbert/stages.py)."""
        return self._whisper

    def _encode(self, mel: np.ndarray) -> np.ndarray:
        return np.asarray(self._whisper.encode(np.ascontiguousarray(mel)))[0].astype(np.float32)  # (N/2, dim)

    def frames(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(times (N,), values (N, dim)) for a float32 mono 16 kHz clip."""
        mel = self._whisper.feature_extractor(np.ascontiguousarray(audio, dtype=np.float32))  # (n_mels, frames)
        times, values = [], []
        for first in range(0, mel.shape[-1], self.WINDOW_MEL_FRAMES):
            states = self._encode(mel[:, first:first + self.WINDOW_MEL_FRAMES])  # (frames/2, dim)
            times.append(first * self.MEL_HOP_SECONDS + np.arange(len(states)) * 2 * self.MEL_HOP_SECONDS)
            values.append(states)
        return np.concatenate(times), np.concatenate(values)


def load_features(name: str, params: FeatureParams = FeatureParams(), model_path: str | None = None,
                  device: str = "cpu", cpu_threads: int = 1):
    """A feature extractor with ``.name`` (stored as the utterance's feature_set), ``.dim`` and ``.frames(audio)``.

    ``model_path``, ``device`` and ``cpu_threads`` are for the ``whisper`` backend (default: the bundled tiny.en
    on the CPU, one thread: one actor per core).
    """
    if name == "egemaps":
        import opensmile

        return OpenSmileLLD("egemaps_v02_lld", opensmile.FeatureSet.eGeMAPSv02)
    if name == "compare":
        import opensmile

        return OpenSmileLLD("compare_2016_lld", opensmile.FeatureSet.ComParE_2016)
    if name == "mfcc":
        extractor = MfccLLD(params)
        # librosa's first call costs seconds (lazy imports, JIT): pay it here, in the loader.
        extractor.frames(np.zeros(SAMPLE_RATE // 4, np.float32))
        return extractor
    if name == "whisper":
        return WhisperEncoderFrames(model_path, device=device, cpu_threads=cpu_threads)
    raise ValueError(f"unknown feature backend {name!r}; choose one of {BACKENDS}")


def word_features(audio: np.ndarray, words: list[Word], extractor) -> list[np.ndarray]:
    """One float32 vector of ``extractor.dim`` per word: the mean of the LLD frames over its span."""
    if not words:
        return []
    if any(w.start is None or w.end is None for w in words):
        raise StageError(_STAGE, "a word has no start/end time")
    if audio.size == 0:
        raise StageError(_STAGE, "empty audio")
    times, values = extractor.frames(audio)
    if times.size == 0:
        raise StageError(_STAGE, "the extractor returned no frames")
    out = []
    for w in words:
        idx = np.flatnonzero((times >= w.start) & (times <= w.end))
        if idx.size == 0:
            idx = [int(np.argmin(np.abs(times - (w.start + w.end) / 2)))]
        block = values[idx]
        with warnings.catch_warnings():  # all-NaN columns warn "Mean of empty slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(block, axis=0)
        out.append(np.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32))
    return out
