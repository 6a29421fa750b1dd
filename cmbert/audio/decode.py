"""Decode any media container held in memory to float32 mono 16 kHz.

PyAV (FFmpeg) reads the bytes through ``io.BytesIO``: mp4/mov/mkv/webm/m4a/wav/flac/mp3/ogg all take
the same path. Video streams are never decoded; the first audio stream is resampled by
libswresample and down-mixed by averaging its channels. The declared duration is checked against
``max_seconds`` before any frame is decoded, so an over-long clip costs only a header read.
"""

from __future__ import annotations

import io

import av
import numpy as np

from cmbert.manifest import StageError

SAMPLE_RATE = 16000
_STAGE = "decode"


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise StageError(_STAGE, "empty input (0 bytes)")
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as e:
        detail = f"{type(e).__name__}: {e.strerror or e}"
        raise StageError(_STAGE, f"not a readable media file: truncated, corrupt or not media ({detail})") from e


def _audio_stream(container) -> av.audio.stream.AudioStream:
    streams = container.streams.audio
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise StageError(_STAGE, f"no audio stream (streams: {', '.join(kinds)})")
    return streams[0]


def _declared_duration(container, stream) -> float | None:
    """Seconds from the audio stream header, else the container header; None when neither says."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def probe_duration(data: bytes) -> float:
    """Duration in seconds of the first audio stream, from the headers (decodes only if they are silent)."""
    with _open(data) as container:
        stream = _audio_stream(container)
        declared = _declared_duration(container, stream)
    if declared is not None:
        return declared
    return len(decode_audio(data)) / SAMPLE_RATE


def decode_audio(
    data: bytes,
    max_seconds: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """Float32 mono 16 kHz samples of the first audio stream, optionally only [start, end) seconds.

    ``max_seconds`` bounds the decoded span (the segment when start/end are given, else the clip).
    Raises StageError("decode", reason) for empty, truncated or non-media bytes, no audio stream,
    an over-long span or an empty segment.
    """
    if start is not None and start < 0:
        raise StageError(_STAGE, f"negative segment start {start}")
    if start is not None and end is not None and end <= start:
        raise StageError(_STAGE, f"empty segment [{start}, {end})")
    t0 = start or 0.0

    with _open(data) as container:
        stream = _audio_stream(container)
        declared = _declared_duration(container, stream)
        if declared is not None:
            if t0 >= declared:
                raise StageError(_STAGE, f"empty segment: start {t0:.3f}s is past the end ({declared:.3f}s)")
            span = min(end, declared) - t0 if end is not None else declared - t0
            if max_seconds is not None and span > max_seconds:
                raise StageError(_STAGE, f"too long: {span:.1f}s > max_seconds={max_seconds:g}")

        if t0 > 0:
            try:  # seek lands on a keyframe at or before t0; the exact trim happens below
                container.seek(int(t0 / stream.time_base), stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                container.seek(0, stream=stream)

        # Keep the source layout and average the channels ourselves: FFmpeg's mono down-mix sums
        # channels at -3 dB each, which can push correlated stereo past full scale.
        resampler = av.AudioResampler(format="fltp", layout=None, rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        n = 0
        first_time: float | None = None
        try:
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = frame.time if frame.time is not None else 0.0
                if end is not None and frame.time is not None and frame.time > end:
                    break
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))  # (channels, samples) -> (samples,)
                    n += chunks[-1].size
                # Headers can be missing or wrong: stop early rather than decode an endless stream.
                if max_seconds is not None and first_time + n / SAMPLE_RATE - t0 > max_seconds + 1.0:
                    raise StageError(_STAGE, f"too long: more than max_seconds={max_seconds:g} decoded")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
        except av.error.FFmpegError as e:
            if not chunks:
                raise StageError(_STAGE, f"corrupt or truncated audio ({type(e).__name__}: {e.strerror or e})") from e
            # FFmpeg reports damage at the tail of a truncated file: keep what decoded, checked below.

    if not chunks:
        raise StageError(_STAGE, "no audio samples decoded (truncated or empty audio stream)")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    first_time = first_time or 0.0

    if declared is not None and start is None and end is None:
        got = first_time + audio.size / SAMPLE_RATE
        if got < 0.5 * declared and declared - got > 1.0:
            raise StageError(_STAGE, f"truncated: decoded {got:.2f}s of a declared {declared:.2f}s")

    # Trim to [start, end) using the first decoded frame's timestamp as the origin.
    lo = max(0, int(round((t0 - first_time) * SAMPLE_RATE)))
    hi = audio.size if end is None else max(0, int(round((end - first_time) * SAMPLE_RATE)))
    audio = audio[lo:hi]
    if audio.size == 0:
        raise StageError(_STAGE, f"empty segment [{start}, {end}) (no samples)")
    if max_seconds is not None and audio.size / SAMPLE_RATE > max_seconds + 0.05:
        raise StageError(_STAGE, f"too long: {audio.size / SAMPLE_RATE:.1f}s > max_seconds={max_seconds:g}")
    if not np.all(np.isfinite(audio)):
        audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(audio)
