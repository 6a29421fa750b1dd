"""diarize (the dvector backend: GE2E d-vectors + clustering), diarize_single, assign_speakers, diarize_pyannote's
contract with any pipeline. The bundled pyannote pipeline itself: tests/unit/test_audio_pyannote.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.audio_corpus import call_der, clip, majority_speakers
from cmbert.audio.decode import SAMPLE_RATE
from cmbert.audio.diarize import (
    DiarizeParams,
    Turn,
    _absorb_short,
    assign_speakers,
    diarize,
    diarize_single,
    load_speaker_encoder,
)
from cmbert.audio.vad import detect_speech, load_vad
from cmbert.manifest import StageError, Word

DER_COLLAR = 0.5  # pyannote.metrics' collar is the total width: +-0.25 s around each reference boundary
DER_TARGET = 0.10


@pytest.fixture(scope="module")
def models():
    return load_vad(), load_speaker_encoder()


def check_turns(turns: list[Turn], duration: float) -> None:
    assert turns == sorted(turns, key=lambda t: t.start)
    assert all(0 <= t.start < t.end <= duration + 1e-6 for t in turns)
    assert all(b.start >= a.end - 1e-6 for a, b in zip(turns, turns[1:]))
    seen = []
    for t in turns:
        if t.speaker not in seen:
            seen.append(t.speaker)
    assert seen == [f"S{i}" for i in range(len(seen))]  # labelled by first appearance


def test_two_voices_taking_turns(models):
    vad, encoder = models
    audio = clip("two_speakers.wav")
    speech = detect_speech(audio, vad)
    turns = diarize(audio, speech, encoder)
    check_turns(turns, audio.size / SAMPLE_RATE)
    # Male, female, male: each VAD region (one per turn) is mostly one speaker, alternating.
    assert majority_speakers(speech, turns) == ["S0", "S1", "S0"]


@pytest.mark.parametrize("name", ["loved_it.mp4", "wonderful.m4a"])
def test_one_voice_is_one_speaker(models, name):
    vad, encoder = models
    audio = clip(name)
    speech = detect_speech(audio, vad)
    turns = diarize(audio, speech, encoder)
    check_turns(turns, audio.size / SAMPLE_RATE)
    assert {t.speaker for t in turns} == {"S0"}
    assert turns == diarize_single(speech)


def test_num_speakers_fixes_the_count(models):
    vad, encoder = models
    audio = clip("two_speakers.wav")
    speech = detect_speech(audio, vad)
    assert {t.speaker for t in diarize(audio, speech, encoder, DiarizeParams(num_speakers=1))} == {"S0"}


def test_no_usable_speech(models):
    _, encoder = models
    with pytest.raises(StageError, match="diarize"):
        diarize(np.zeros(SAMPLE_RATE, np.float32), [(0.1, 0.15)], encoder)
    with pytest.raises(StageError, match="diarize"):
        diarize(np.zeros(SAMPLE_RATE, np.float32), [(0.0, 1.0)], encoder)  # digital silence


def test_diarize_single():
    assert diarize_single([(0.5, 1.0), (2.0, 2.0), (3.0, 4.5)]) == [Turn(0.5, 1.0, "S0"), Turn(3.0, 4.5, "S0")]


def test_absorb_short_runs():
    runs = [[0.0, 2.0, 0], [2.0, 2.2, 1], [2.2, 4.0, 0], [4.0, 6.0, 1]]
    assert _absorb_short(runs, 0.4) == [[0.0, 4.0, 0], [4.0, 6.0, 1]]


def test_assign_speakers_by_largest_overlap():
    turns = [Turn(0.0, 1.0, "S0"), Turn(1.0, 2.0, "S1"), Turn(3.0, 4.0, "S0")]
    words = [
        Word("a", 0.2, 0.5),
        Word("b", 0.8, 1.5),  # 0.2 s in S0, 0.5 s in S1
        Word("c", 2.1, 2.3),  # in a gap: nearest turn edge is S1's end
        Word("d", 2.8, 3.2),
        Word("e", None, None),
    ]
    assert [w.speaker for w in assign_speakers(words, turns)] == ["S0", "S1", "S1", "S0", None]
    assert assign_speakers(words, []) == words


def test_diarize_pyannote_with_a_stand_in_pipeline():
    from pyannote.core import Annotation, Segment

    from cmbert.audio.diarize import diarize_pyannote

    def pipeline(file):
        assert file["sample_rate"] == SAMPLE_RATE and file["waveform"].shape == (1, SAMPLE_RATE)
        ann = Annotation()
        ann[Segment(0.5, 0.9)] = "SPEAKER_01"
        ann[Segment(0.0, 0.4)] = "SPEAKER_00"
        return ann

    turns = diarize_pyannote(np.zeros(SAMPLE_RATE, np.float32), pipeline)
    assert turns == [Turn(0.0, 0.4, "S0"), Turn(0.5, 0.9, "S1")]


@pytest.mark.realdata
def test_der_on_real_call(models, shared_data):
    import soundfile as sf

    vad, encoder = models
    audio, _ = sf.read(shared_data / "call-2spk" / "sample.wav", dtype="float32")
    turns = diarize(audio, detect_speech(audio, vad), encoder)
    assert len({t.speaker for t in turns}) == 2
    der = call_der(shared_data / "call-2spk", turns, audio.size / SAMPLE_RATE, collar=DER_COLLAR)
    assert der <= DER_TARGET, f"DER {der:.3f} (collar {DER_COLLAR})"


def test_num_speakers_reaches_pyannote():
    """--num-speakers travels ClipParams -> speaker_turns -> the pipeline's num_speakers (a stand-in pipeline
    records what it is given; the real one is in tests/unit/test_audio_pyannote.py)."""
    from pyannote.core import Annotation, Segment

    from cmbert.pipeline import ClipModels, ClipParams, speaker_turns

    seen = []

    def pipeline(file, **kwargs):
        seen.append(kwargs)
        ann = Annotation()
        ann[Segment(0.0, 0.5)] = "A"
        return ann

    models = ClipModels(vad=None, features=None, pyannote=pipeline)
    audio = np.zeros(SAMPLE_RATE, np.float32)
    for params, expected in ((ClipParams(), {}), (ClipParams(num_speakers=3), {"num_speakers": 3}),
                             (ClipParams(diarizer="pyannote", num_speakers=2), {"num_speakers": 2})):
        assert speaker_turns(audio, [(0.0, 0.5)], models, params) == [Turn(0.0, 0.5, "S0")]
        assert seen[-1] == expected


def test_a_word_in_overlapping_speech():
    """pyannote's turns overlap: a word goes to the turn covering more of it; when both cover all of it, to the
    turn that began first (the floor holder, not the back-channel)."""
    turns = [Turn(0.0, 5.0, "S0"), Turn(2.0, 3.0, "S1"), Turn(4.8, 8.0, "S1")]
    words = [Word("yeah", 2.2, 2.6), Word("and", 4.7, 5.3), Word("so", 5.5, 5.9)]
    assert [w.speaker for w in assign_speakers(words, turns)] == ["S0", "S1", "S1"]
