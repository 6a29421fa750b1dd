"""decode_audio / probe_duration on containers written here with PyAV and soundfile, and on bad bytes."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from cmbert.audio.decode import SAMPLE_RATE, decode_audio, probe_duration
from cmbert.manifest import StageError
from tests.helpers import CORPUS
from tests.helpers.media import pyav_bytes

TONE_HZ = 440.0


def tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    """(samples, channels) float32: a 440 Hz tone, the same in every channel at decreasing level."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.4 * np.sin(2 * np.pi * TONE_HZ * t).astype(np.float32)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)


def dominant_hz(audio: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spec) * SAMPLE_RATE / audio.size)


def soundfile_bytes(audio: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def check_tone(audio: np.ndarray, seconds: float, tol: float = 0.08) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size / SAMPLE_RATE - seconds) < tol
    assert abs(dominant_hz(audio) - TONE_HZ) < 5
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


def test_wav_8k_stereo():
    data = soundfile_bytes(tone(2.0, 8000, 2), 8000, "WAV")
    audio = decode_audio(data)
    check_tone(audio, 2.0, tol=0.01)
    assert 0.3 < np.abs(audio).max() < 0.4  # channels averaged (0.4 and 0.36), not summed
    assert probe_duration(data) == pytest.approx(2.0, abs=0.01)


def test_flac_48k_six_channels():
    data = soundfile_bytes(tone(1.5, 48000, 6), 48000, "FLAC")
    check_tone(decode_audio(data), 1.5, tol=0.01)


def test_mp4_with_video_and_aac(tmp_path):
    data = pyav_bytes(tmp_path, tone(2.0, 44100, 2), 44100, "mp4", "aac", video_seconds=2.0)
    with av.open(io.BytesIO(data)) as c:
        assert {s.type for s in c.streams} == {"audio", "video"}
    check_tone(decode_audio(data), 2.0)
    assert probe_duration(data) == pytest.approx(2.0, abs=0.08)


def test_ogg_opus(tmp_path):
    check_tone(decode_audio(pyav_bytes(tmp_path, tone(1.0, 48000, 1), 48000, "ogg", "libopus")), 1.0)


def test_mp3(tmp_path):
    check_tone(decode_audio(pyav_bytes(tmp_path, tone(1.0, 22050, 1), 22050, "mp3", "libmp3lame")), 1.0, tol=0.1)


def test_segment_is_trimmed():
    data = soundfile_bytes(tone(3.0, 16000, 1), 16000, "WAV")
    seg = decode_audio(data, start=1.0, end=2.25)
    assert seg.size == int(1.25 * SAMPLE_RATE)
    assert decode_audio(data, start=2.5).size == int(0.5 * SAMPLE_RATE)
    # A short segment of a long clip passes max_seconds: the bound is on the decoded span.
    assert decode_audio(data, max_seconds=1.5, start=0.5, end=1.5).size == SAMPLE_RATE


def test_segment_of_compressed_stream_matches_full_decode(tmp_path):
    data = pyav_bytes(tmp_path, tone(3.0, 48000, 1), 48000, "ogg", "libopus")
    full = decode_audio(data)
    seg = decode_audio(data, start=1.0, end=2.0)
    assert abs(seg.size - SAMPLE_RATE) <= 2
    ref = full[SAMPLE_RATE : 2 * SAMPLE_RATE]
    lag = np.argmax(np.correlate(seg[:4000], ref[:4000], "full")) - 3999
    assert abs(lag) < 40  # within 2.5 ms of the full decode


def test_corpus_clips_decode():
    for path in sorted(CORPUS.glob("*")):
        if path.suffix == ".csv":
            continue
        audio = decode_audio(path.read_bytes())
        assert 3.0 < audio.size / SAMPLE_RATE < 10.0, path.name
        assert 0.1 < np.abs(audio).max() <= 1.0, path.name


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp: b"", "empty input"),
        (lambda tmp: np.random.default_rng(0).bytes(20000), "not a readable media file"),
        (lambda tmp: b"RIFF\x00\x00\x00\x00WAVE" + bytes(100), ""),
    ],
    ids=["zero-bytes", "random-bytes", "wav-header-only"],
)
def test_bad_bytes(tmp_path, make, reason):
    with pytest.raises(StageError) as e:
        decode_audio(make(tmp_path))
    assert e.value.stage == "decode" and reason in e.value.reason


def test_truncated_mp4(tmp_path):
    data = pyav_bytes(tmp_path, tone(2.0, 44100, 1), 44100, "mp4", "aac", video_seconds=2.0)
    with pytest.raises(StageError, match="decode"):
        decode_audio(data[: len(data) // 2])


def test_truncated_faststart_mp4(tmp_path):
    # moov first: the headers survive the cut and promise 4 s, the data holds much less.
    data = pyav_bytes(tmp_path, tone(4.0, 44100, 1), 44100, "mp4", "aac", options={"movflags": "+faststart"})
    with pytest.raises(StageError, match="truncated"):
        decode_audio(data[: len(data) // 4])


def test_video_without_audio(tmp_path):
    data = pyav_bytes(tmp_path, None, 0, "mp4", None, video_seconds=1.0)
    with pytest.raises(StageError, match="no audio stream"):
        decode_audio(data)
    with pytest.raises(StageError, match="no audio stream"):
        probe_duration(data)


def test_too_long():
    data = soundfile_bytes(tone(3.0, 16000, 1), 16000, "WAV")
    with pytest.raises(StageError, match="too long"):
        decode_audio(data, max_seconds=2.0)
    assert decode_audio(data, max_seconds=3.5).size == 3 * SAMPLE_RATE


def test_empty_segment():
    data = soundfile_bytes(tone(1.0, 16000, 1), 16000, "WAV")
    with pytest.raises(StageError, match="empty segment"):
        decode_audio(data, start=5.0)
    with pytest.raises(StageError, match="empty segment"):
        decode_audio(data, start=0.5, end=0.5)
