"""Container files written with PyAV (audio and/or a tiny video stream), for the decoder tests and the
bad-input corpus."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pyav_bytes(
    tmp_path: Path,
    audio: np.ndarray | None,
    rate: int,
    fmt: str,
    codec: str | None,
    video_seconds: float = 0.0,
    options: dict | None = None,
) -> bytes:
    """Encode (samples, channels) audio and/or a tiny video stream into a container file; return its bytes."""
    path = tmp_path / f"clip.{fmt}"
    with av.open(str(path), mode="w", format=fmt, options=options or {}) as out:
        a = v = None
        if audio is not None:
            layout = {1: "mono", 2: "stereo"}[audio.shape[1]]
            a = out.add_stream(codec, rate=rate, layout=layout)
        if video_seconds:
            v = out.add_stream("libx264", rate=4, options={"preset": "ultrafast", "threads": "1"})
            v.width = v.height = 32
            v.pix_fmt = "yuv420p"
        if a is not None:
            pcm = np.ascontiguousarray((audio * 32767).astype(np.int16).reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=a.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            for packet in [*a.encode(frame), *a.encode(None)]:
                out.mux(packet)
        if v is not None:
            for i in range(int(video_seconds * 4)):
                vf = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i, np.uint8), format="rgb24")
                vf.pts = i
                for packet in v.encode(vf):
                    out.mux(packet)
            for packet in v.encode(None):
                out.mux(packet)
    return path.read_bytes()
