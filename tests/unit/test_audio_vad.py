"""detect_speech with the bundled Silero VAD on corpus speech, silence and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.audio_corpus import clip
from cmbert.audio.decode import SAMPLE_RATE
from cmbert.audio.vad import VadParams, detect_speech, load_vad
from cmbert.manifest import StageError


@pytest.fixture(scope="module")
def vad():
    return load_vad()


def test_load_keeps_torch_threads():
    before = torch.get_num_threads()
    load_vad()
    assert torch.get_num_threads() == before


def test_speech_regions_on_corpus_clip(vad):
    audio = clip("loved_it.mp4")
    regions = detect_speech(audio, vad)
    assert regions == sorted(regions)
    assert all(0 <= s < e <= audio.size / SAMPLE_RATE + 1e-6 for s, e in regions)
    assert all(b[0] >= a[1] for a, b in zip(regions, regions[1:]))
    assert 0.2 < regions[0][0] < 0.6  # the clip opens with 0.4 s of silence
    speech = sum(e - s for s, e in regions)
    assert 0.6 * audio.size / SAMPLE_RATE < speech < audio.size / SAMPLE_RATE


def test_turn_gaps_split_regions(vad):
    regions = detect_speech(clip("two_speakers.wav"), vad)  # three turns with 0.5 s pauses
    assert len(regions) == 3


def test_model_state_does_not_leak_between_calls(vad):
    audio = clip("battery.ogg")
    assert detect_speech(audio, vad) == detect_speech(audio, vad)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: np.zeros(3 * SAMPLE_RATE, np.float32),
        lambda rng: (0.3 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32),
        lambda rng: (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32),
        lambda rng: np.zeros(800, np.float32),
    ],
    ids=["silence", "white-noise", "tone", "too-short"],
)
def test_no_speech(vad, make):
    with pytest.raises(StageError) as e:
        detect_speech(make(np.random.default_rng(0)), vad)
    assert e.value.stage == "vad" and "no speech found" in e.value.reason


def test_speech_below_minimum_total_is_rejected(vad):
    with pytest.raises(StageError, match="no speech"):
        detect_speech(clip("battery.ogg"), vad, VadParams(min_total_speech_seconds=60.0))


@pytest.mark.realdata
def test_call_speech_coverage(vad, shared_data):
    import soundfile as sf

    audio, rate = sf.read(shared_data / "call-2spk" / "sample.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    regions = detect_speech(audio, vad)
    rttm = shared_data / "call-2spk" / "sample.rttm"
    ref = [(float(f[3]), float(f[3]) + float(f[4])) for f in map(str.split, open(rttm))]
    grid = np.arange(0, audio.size / SAMPLE_RATE, 0.01)
    in_ref = np.any([(grid >= s) & (grid < e) for s, e in ref], axis=0)
    in_hyp = np.any([(grid >= s) & (grid < e) for s, e in regions], axis=0)
    assert (in_ref & ~in_hyp).sum() / in_ref.sum() < 0.05  # missed speech


def test_energy_fallback_finds_loud_regions_and_refuses_silence():
    import numpy as np
    import pytest

    from cmbert.audio.vad import detect_energy
    from cmbert.manifest import StageError

    t = np.arange(16000 * 3) / 16000
    audio = np.zeros_like(t, dtype=np.float32)
    audio[16000:32000] = 0.5 * np.sin(2 * np.pi * 220 * t[16000:32000])  # 1 s of tone in the middle
    regions = detect_energy(audio)
    assert len(regions) == 1 and abs(regions[0][0] - 1.0) < 0.05 and abs(regions[0][1] - 2.0) < 0.05
    with pytest.raises(StageError, match="no speech"):
        detect_energy(np.zeros(16000 * 3, dtype=np.float32))
