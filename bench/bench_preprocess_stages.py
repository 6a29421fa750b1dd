"""Speed of each preprocessing stage in times-realtime (audio seconds per compute second), one core.

    python bench/bench_preprocess_stages.py [--clips 20] [--features egemaps]

Runs the pure stage functions of cmbert.audio in one process with one thread (torch and CTranslate2),
as one Ray actor per core would, over ``--clips`` RAVDESS clips (~3.5 s each, actors 01-16, spread over
emotions) from ../shared/data, through both word paths: forced alignment of the known text and ASR.
Models are loaded (and warmed on one clip) before timing. The 30 s two-speaker call is timed as well,
with its diarization error rate (DER, pyannote.metrics, collar 0.5 s total) and ASR word error rate.
Writes bench/results/preprocess_stages.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")

from common import SHARED_DATA, write_result  # noqa: E402

STAGES = ("decode", "vad", "diarize", "align", "asr", "features", "split")


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def run_clip(data: bytes, text: str | None, m: dict, times: dict) -> dict:
    """All stages on one clip; adds each stage's seconds to ``times``; returns the intermediate results."""
    from cmbert.audio.decode import SAMPLE_RATE, decode_audio
    from cmbert.audio.diarize import assign_speakers, diarize
    from cmbert.audio.features import word_features
    from cmbert.audio.utterances import split_utterances
    from cmbert.audio.vad import detect_speech
    from cmbert.audio.words import align_words, transcribe

    def timed(stage, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - t0
        return out

    audio = timed("decode", decode_audio, data)
    speech = timed("vad", detect_speech, audio, m["vad"])
    turns = timed("diarize", diarize, audio, speech, m["encoder"])
    aligned = timed("align", align_words, audio, text, m["aligner"]) if text else None
    asr_words = timed("asr", transcribe, audio, m["asr"])
    words = assign_speakers(aligned or asr_words, turns)
    timed("features", word_features, audio, words, m["features"])
    timed("split", split_utterances, words, turns)
    return {"seconds": audio.size / SAMPLE_RATE, "turns": turns, "asr_words": asr_words, "aligned": aligned}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--features", default="egemaps", choices=["egemaps", "compare", "mfcc"])
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from cmbert.audio.diarize import load_speaker_encoder
    from cmbert.audio.features import load_features
    from cmbert.audio.vad import load_vad
    from cmbert.audio.words import load_aligner, load_asr

    t0 = time.perf_counter()
    models = {
        "vad": load_vad(),
        "encoder": load_speaker_encoder(),
        "aligner": load_aligner(),
        "asr": load_asr(cpu_threads=1),
        "features": load_features(args.features),
    }
    load_s = time.perf_counter() - t0

    rav = SHARED_DATA / "ravdess"
    with open(rav / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // (args.clips + 1))
    picked = rows[step::step][: args.clips]
    run_clip((rav / picked[0]["file"]).read_bytes(), picked[0]["text"], models, {})  # warm-up, untimed

    times: dict[str, float] = {}
    audio_s = 0.0
    asr_errors = []
    for row in picked:
        out = run_clip((rav / row["file"]).read_bytes(), row["text"], models, times)
        audio_s += out["seconds"]
        asr_errors.append((normalise(row["text"]), normalise(" ".join(w.word for w in out["asr_words"]))))
    import jiwer

    ravdess = {
        "clips": len(picked),
        "audio_seconds": round(audio_s, 2),
        "stage_seconds": {k: round(v, 3) for k, v in times.items()},
        "x_realtime": {k: round(audio_s / v, 1) for k, v in times.items()},
        "x_realtime_align_path": round(audio_s / sum(v for k, v in times.items() if k != "asr"), 1),
        "x_realtime_asr_path": round(audio_s / sum(v for k, v in times.items() if k != "align"), 1),
        "asr_wer": round(jiwer.wer([r for r, _ in asr_errors], [h for _, h in asr_errors]), 3),
    }

    call = SHARED_DATA / "call-2spk"
    stm = [line.split(None, 5) for line in open(call / "sample.stm")]
    call_times: dict[str, float] = {}
    out = run_clip((call / "sample.wav").read_bytes(), " ".join(s[5] for s in stm), models, call_times)
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for f in map(str.split, open(call / "sample.rttm")):
        ref[Segment(float(f[3]), float(f[3]) + float(f[4]))] = f[7]
    for t in out["turns"]:
        hyp[Segment(t.start, t.end)] = t.speaker
    uem = Timeline([Segment(0, out["seconds"])])
    ref_text = normalise(" ".join(s[5] for s in stm))
    call_fig = {
        "audio_seconds": round(out["seconds"], 2),
        "stage_seconds": {k: round(v, 3) for k, v in call_times.items()},
        "x_realtime": {k: round(out["seconds"] / v, 1) for k, v in call_times.items()},
        "speakers": len({t.speaker for t in out["turns"]}),
        "der_collar_0.5": round(DiarizationErrorRate(collar=0.5)(ref, hyp, uem=uem), 4),
        "der_collar_0": round(DiarizationErrorRate(collar=0.0)(ref, hyp, uem=uem), 4),
        "asr_wer": round(jiwer.wer(ref_text, normalise(" ".join(w.word for w in out["asr_words"]))), 3),
    }
    figures = {"ravdess": ravdess, "call_2spk": call_fig, "model_load_seconds": round(load_s, 2),
               "features": models["features"].name, "threads": 1}
    print(figures)
    write_result(
        "preprocess_stages",
        figures,
        notes="one process, 1 torch thread, CTranslate2 cpu_threads=1; x_realtime = audio seconds / stage seconds. "
        "Whisper pads every input to 30 s, so ASR is far slower per second on short clips than on the call. "
        "The machine is shared: compare figures only within one run.",
    )


if __name__ == "__main__":
    main()
