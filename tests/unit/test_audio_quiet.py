"""Quiet or short speech is heard: it never makes a whole clip a reject ("no speech found", "ASR found no words")."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.audio_corpus import clip
from cmbert.audio.decode import SAMPLE_RATE
from cmbert.audio.vad import LevelParams, boost_quiet, detect_speech, load_vad
from cmbert.manifest import StageError


def _db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


def quiet(audio: np.ndarray, gain_db: float, seed: int = 0) -> np.ndarray:
    """``audio`` ``gain_db`` quieter over a faint noise floor (-80 dBFS): a far or soft talker."""
    noise = 1e-4 * np.random.default_rng(seed).standard_normal(audio.size)
    return (audio * 10 ** (gain_db / 20) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def vad():
    return load_vad()


def test_boost_quiet_leaves_normal_audio_alone():
    audio = clip("two_speakers.wav")
    assert boost_quiet(audio) is audio
    soft = quiet(audio, -45)
    raised = boost_quiet(soft)
    assert _db(raised) - _db(soft) > 20 and np.abs(raised).max() < 1.0
    assert boost_quiet(np.zeros(SAMPLE_RATE, np.float32)).max() == 0.0  # digital silence stays silent


def test_quiet_speech_keeps_its_turns(vad):
    soft = quiet(clip("two_speakers.wav"), -50)
    loud = detect_speech(clip("two_speakers.wav"), vad)
    heard = detect_speech(boost_quiet(soft, LevelParams()), vad)
    assert len(heard) == len(loud) == 3
    assert sum(e - s for s, e in heard) > 0.9 * sum(e - s for s, e in loud)


@pytest.mark.parametrize("start", [0.45, 6.6])
def test_one_short_word_is_speech(vad, start):
    """0.2 s of speech in 2 s of near-silence: below Silero's usual minimum burst, found by the second pass."""
    x = quiet(np.zeros(2 * SAMPLE_RATE, np.float32), 0)
    word = clip("two_speakers.wav")[int(start * SAMPLE_RATE): int((start + 0.2) * SAMPLE_RATE)]
    x[SAMPLE_RATE // 2: SAMPLE_RATE // 2 + word.size] += word
    regions = detect_speech(x, vad)
    assert regions and all(0.4 <= s and e <= 0.85 for s, e in regions)


def test_noise_and_silence_are_still_no_speech(vad):
    rng = np.random.default_rng(1)
    for x in (np.zeros(4 * SAMPLE_RATE, np.float32), (0.1 * rng.standard_normal(4 * SAMPLE_RATE)).astype(np.float32)):
        with pytest.raises(StageError, match="no speech found"):
            detect_speech(x, vad)
