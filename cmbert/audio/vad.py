"""Voice activity detection with Silero VAD v6 (TorchScript model bundled in the ``silero-vad`` wheel)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cmbert.audio._threads import torch_threads
from cmbert.audio.decode import SAMPLE_RATE
from cmbert.manifest import StageError


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5  # speech probability per 32 ms window
    min_speech_seconds: float = 0.25  # shorter bursts are dropped
    min_silence_seconds: float = 0.3  # shorter pauses do not split a region
    speech_pad_seconds: float = 0.05  # added to both ends of each region
    min_total_speech_seconds: float = 0.2  # less than this in the whole clip counts as no speech
    # A clip with less than that gets a second, more permissive pass before it counts as speechless: one short
    # word ("Yes.", 0.2 s) is below min_speech_seconds and would make the whole clip a reject.
    retry_threshold: float = 0.35
    retry_min_speech_seconds: float = 0.1
    torch_threads: int | None = 1  # intra-op threads during the call (None: the process setting)


@dataclass(frozen=True)
class LevelParams:
    # Silero's speech probability falls with the level: speech 40-50 dB under full scale (a far or quiet
    # talker) loses turns or the whole clip ("no speech found"; whisper's own Silero filter then drops the
    # words: "ASR found no words"). Quiet clips are raised to this level for detection, diarization and words
    # (never for the acoustic features, which keep the real loudness); louder clips are left as they are.
    target_db: float = -30.0  # dBFS of the loud frames (99th percentile of 30 ms frame RMS)
    max_gain_db: float = 50.0
    frame_seconds: float = 0.03


def boost_quiet(audio: np.ndarray, params: LevelParams = LevelParams()) -> np.ndarray:
    """``audio`` raised to ``target_db`` when its loud frames are quieter, never clipped; else ``audio`` itself."""
    hop = int(params.frame_seconds * SAMPLE_RATE)
    n = audio.size // hop
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))  # (frames,)
    level = 20 * np.log10(np.percentile(rms, 99) + 1e-12)
    peak = 20 * np.log10(np.abs(audio).max() + 1e-12)
    gain = min(params.target_db - level, params.max_gain_db, -0.1 - peak)
    if gain <= 0 or level < -100:  # loud enough, or digital silence
        return audio
    return (audio * np.float32(10 ** (gain / 20))).astype(np.float32)


def load_vad():
    """The Silero VAD ONNX model, from the package's own files (no download), on one onnxruntime thread.

    ONNX rather than TorchScript: the same regions on RAVDESS, 1.85x faster on one core (121x vs 65x realtime),
    which made VAD the second-slowest stage of the alignment path (bench/bench_preprocess.py).

    Importing ``silero_vad`` calls ``torch.set_num_threads(1)`` as a side effect; the caller's thread
    count is restored here so other torch stages in the same process keep theirs.
    """
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad(onnx=True)


def detect_speech(audio: np.ndarray, model, params: VadParams = VadParams()) -> list[tuple[float, float]]:
    """Speech regions as (start, end) seconds, sorted and disjoint.

    Raises StageError("vad", "no speech found") for silence, noise or too little speech.
    """
    if audio.ndim != 1:
        raise StageError("vad", f"expected mono audio, got shape {audio.shape}")
    if audio.size < SAMPLE_RATE // 10:
        raise StageError("vad", "no speech found (audio shorter than 0.1 s)")
    wav = torch.tensor(audio, dtype=torch.float32)  # a copy: the caller's array may be read-only
    regions = _silero(wav, model, params.threshold, params.min_speech_seconds, params)
    total = sum(e - s for s, e in regions)
    if total < params.min_total_speech_seconds:
        regions = _silero(wav, model, params.retry_threshold, params.retry_min_speech_seconds, params)
        total = sum(e - s for s, e in regions)
        if total < params.min_total_speech_seconds:
            raise StageError("vad", f"no speech found ({total:.2f}s of speech-like audio)")
    return regions


def _silero(wav: torch.Tensor, model, threshold: float, min_speech: float, params: VadParams):
    from silero_vad import get_speech_timestamps

    with torch.inference_mode(), torch_threads(params.torch_threads):
        stamps = get_speech_timestamps(
            wav,
            model,
            threshold=threshold,
            sampling_rate=SAMPLE_RATE,
            min_speech_duration_ms=int(min_speech * 1000),
            min_silence_duration_ms=int(params.min_silence_seconds * 1000),
            speech_pad_ms=int(params.speech_pad_seconds * 1000),
        )
    model.reset_states()  # the model keeps RNN state between calls
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


@dataclass(frozen=True)
class EnergyParams:
    frame_seconds: float = 0.03
    below_peak_db: float = 30.0  # frames within this many dB of the loudest frame count as speech
    min_total_speech_seconds: float = 0.3


def detect_energy(audio: np.ndarray, params: EnergyParams = EnergyParams()) -> list[tuple[float, float]]:
    """Loud regions by frame energy: the fallback when silero misses speech that a transcript says is there
    (seen on shouted RAVDESS clips, where silero's speech probability stays under 0.3)."""
    hop = int(params.frame_seconds * SAMPLE_RATE)
    n = len(audio) // hop
    if n == 0:
        raise StageError("vad", "no speech found (audio shorter than one frame)")
    frames = audio[: n * hop].reshape(n, hop)  # (frames, hop)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)  # (frames,)
    loud = db > db.max() - params.below_peak_db
    if db.max() < -60:  # digital silence
        loud[:] = False
    regions, start = [], None
    for i, on in enumerate(np.append(loud, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            regions.append((start * params.frame_seconds, i * params.frame_seconds))
            start = None
    if sum(e - s for s, e in regions) < params.min_total_speech_seconds:
        raise StageError("vad", "no speech found (silero and frame energy agree)")
    return regions
