"""Preprocessing speed in times-realtime: per stage and end to end, the Ray job vs the same functions in one process.

    python bench/bench_preprocess.py [--clips 240] [--asr-clips 40] [--features whisper] [--skip-ray]

Clips: the RAVDESS dev clips (actors 13-16, 240 clips, ~15 min of speech) from ../shared/data, in manifest
order; the ASR path runs on the first ``--asr-clips`` of them (whisper decoding is ~10x the alignment path's
cost). x realtime = audio seconds / wall seconds.

- sequential: ``cmbert.pipeline.process_clip`` (the pure function the Ray stage calls) over the clips in one
  process with the machine's cores (torch and CTranslate2 at 2 threads); each stage function is wrapped with
  a timer, so the per-stage figures are the job's own functions. Models load once, timed apart.
- ray: ``jobs/preprocess.py`` main() on the same clips (a manifest of them), job defaults (one actor per CPU
  at 0.5 CPU, 1 torch thread each), a fresh output folder. Local Ray is started first and timed apart (a
  cluster is up before a nightly job); main() includes planning, actor start, model loads, writing Parquet.
  Ray vs sequential = the ratio of the two end-to-end rates (sequential including its model load). The job
  also runs on the first tenth of the clips; the two sizes split its wall time into a fixed start-up and a
  steady rate (ray_fixed_startup_s, ray_steady_x_realtime).
- the 30 s two-speaker call: the default diarizer's error rate (pyannote.metrics, collar 0.5 s total and 0) against
  sample.rttm and ASR word error rate (jiwer, lower case, punctuation dropped) against sample.stm.
Writes bench/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, SHARED_DATA, ravdess_dev_rows, write_manifest, write_result  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))

# Stage functions as cmbert.pipeline imports them: name in the module -> stage label.
STAGES = {"decode_audio": "decode", "boost_quiet": "level", "detect_speech": "vad", "diarize": "diarize",
          "diarize_pyannote": "diarize", "align_words": "align",
          "transcribe": "asr", "assign_speakers": "assign", "split_utterances": "split", "word_features": "features"}


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


@contextmanager
def stage_timers(times: dict[str, float]):
    """Wrap cmbert.pipeline's stage functions with timers that add into ``times`` (restored on exit)."""
    from cmbert import pipeline

    saved = {name: getattr(pipeline, name) for name in STAGES}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[STAGES[name]] = times.get(STAGES[name], 0.0) + time.perf_counter() - t0
        return wrapper

    for name, fn in saved.items():
        setattr(pipeline, name, timed(name, fn))
    try:
        yield times
    finally:
        for name, fn in saved.items():
            setattr(pipeline, name, fn)


def load_models(words: str, features: str, threads: int):
    """What one ClipStage actor loads (cmbert/stages.py), with ``threads`` for torch and CTranslate2."""
    import torch

    from cmbert.audio import diarize, vad
    from cmbert.audio import features as feats
    from cmbert.audio import words as w
    from cmbert.pipeline import ClipModels

    torch.set_num_threads(threads)
    from cmbert.pipeline import DEFAULT_DIARIZER

    models = ClipModels(vad=vad.load_vad(), features=feats.load_features(features))
    if DEFAULT_DIARIZER == "pyannote":
        models.pyannote = diarize.load_pyannote()
    else:
        models.speaker_encoder = diarize.load_speaker_encoder()
    if words == "align":
        models.aligner = w.load_aligner()
    else:
        models.asr = w.load_asr(cpu_threads=threads)
    return models


def sequential(rows: list[dict], words: str, features: str, threads: int) -> dict:
    """process_clip over the clips in one process; per-stage seconds from timers around the stage functions."""
    from cmbert.manifest import Clip
    from cmbert.pipeline import ClipParams, process_clip

    t0 = time.perf_counter()
    models = load_models(words, features, threads)
    load_s = time.perf_counter() - t0
    params = ClipParams(words=words)
    root = SHARED_DATA / "ravdess"
    warm = root / rows[0]["file"]
    process_clip(warm.read_bytes(), Clip("warm", str(warm), rows[0]["text"] if words == "align" else None),
                 models, params)  # first call pays lazy initialisation; not timed (the Ray actors pay it too)
    times: dict[str, float] = {}
    audio_s, utterances, hyps = 0.0, 0, []
    t0 = time.perf_counter()
    with stage_timers(times):
        for row in rows:
            path = root / row["file"]
            t_read = time.perf_counter()
            data = path.read_bytes()
            times["read"] = times.get("read", 0.0) + time.perf_counter() - t_read
            clip = Clip(row["file"], str(path), row["text"] if words == "align" else None)
            result = process_clip(data, clip, models, params)
            audio_s += result.audio_seconds
            utterances += len(result.utterances)
            hyps.append(" ".join(u.text for u in result.utterances))
    wall = time.perf_counter() - t0
    out = {"clips": len(rows), "audio_seconds": round(audio_s, 2), "utterances": utterances,
           "model_load_s": round(load_s, 2), "wall_s": round(wall, 2), "threads": threads,
           "x_realtime": round(audio_s / wall, 2), "x_realtime_with_load": round(audio_s / (wall + load_s), 2),
           "stage_seconds": {k: round(v, 3) for k, v in sorted(times.items())},
           "stage_x_realtime": {k: round(audio_s / v, 1) for k, v in sorted(times.items()) if v > 0},
           "stage_share": {k: round(v / wall, 3) for k, v in sorted(times.items())}}
    if words == "asr":
        import jiwer

        out["wer_vs_manifest"] = round(jiwer.wer([normalise(r["text"]) for r in rows], [normalise(h) for h in hyps]), 4)
    return out


def ray_job(rows: list[dict], words: str, features: str, work: str, tag: str = "") -> dict:
    import preprocess

    manifest = write_manifest(f"{work}/manifest-{words}{tag}.csv", rows)
    argv = ["--input", str(SHARED_DATA / "ravdess"), "--manifest", manifest, "--output", f"{work}/out-{words}{tag}",
            "--words", words, "--features", features]
    tallies = []
    real_run = preprocess.run
    preprocess.run = lambda cfg: tallies.append(real_run(cfg)) or tallies[-1]
    try:
        t0 = time.perf_counter()
        rc = preprocess.main(argv)
        wall = time.perf_counter() - t0
    finally:
        preprocess.run = real_run
    tally = tallies[-1]
    if rc != 0 or tally.rejected:
        raise RuntimeError(f"preprocess.main returned {rc} with {tally.rejected} rejects")
    return {"clips": tally.processed + tally.skipped, "audio_seconds": round(tally.audio_seconds, 2),
            "utterances": tally.output_rows, "rejects": tally.rejected, "wall_s": round(wall, 2), "x_realtime": round(tally.audio_seconds / wall, 2),
            "config": "job defaults: one actor per CPU at 0.5 CPU, 1 torch thread each"}


def call_checks(features: str, threads: int) -> dict:
    """DER of the default diarizer and WER of the ASR path on the real two-speaker call."""
    import jiwer
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from cmbert.audio.decode import SAMPLE_RATE, decode_audio
    from cmbert.audio.vad import boost_quiet, detect_speech
    from cmbert.audio.words import transcribe
    from cmbert.pipeline import DEFAULT_DIARIZER, ClipParams, speaker_turns

    call = SHARED_DATA / "call-2spk"
    models = load_models("asr", features, threads)
    audio = decode_audio((call / "sample.wav").read_bytes())
    t0 = time.perf_counter()
    heard = boost_quiet(audio)
    turns = speaker_turns(heard, detect_speech(heard, models.vad), models, ClipParams())  # the default diarizer
    diarize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    words = transcribe(audio, models.asr)
    asr_s = time.perf_counter() - t0
    ref, hyp = Annotation(), Annotation()
    for f in map(str.split, open(call / "sample.rttm")):
        ref[Segment(float(f[3]), float(f[3]) + float(f[4]))] = f[7]
    for t in turns:
        hyp[Segment(t.start, t.end)] = t.speaker
    seconds = audio.size / SAMPLE_RATE
    uem = Timeline([Segment(0, seconds)])
    ref_text = normalise(" ".join(line.split(None, 5)[5] for line in open(call / "sample.stm")))
    return {"audio_seconds": round(seconds, 2), "diarizer": DEFAULT_DIARIZER, "speakers": len({t.speaker for t in turns}),
            "der_collar_0.5": round(DiarizationErrorRate(collar=0.5)(ref, hyp, uem=uem), 4),
            "der_collar_0": round(DiarizationErrorRate(collar=0.0)(ref, hyp, uem=uem), 4),
            "asr_wer": round(jiwer.wer(ref_text, normalise(" ".join(w.word for w in words))), 4),
            "vad_diarize_s": round(diarize_s, 2), "asr_s": round(asr_s, 2)}


def main() -> None:
    from cmbert.audio.features import DEFAULT_BACKEND

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=240, help="RAVDESS dev clips for the alignment path")
    ap.add_argument("--asr-clips", type=int, default=40, help="of those, how many for the ASR path")
    ap.add_argument("--features", default=DEFAULT_BACKEND, choices=["egemaps", "compare", "mfcc", "whisper"],
                    help="word features (default: the job's default)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="sequential run's threads")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    if not (SHARED_DATA / "ravdess" / "manifest.csv").exists():
        print(f"[bench] skipped: {SHARED_DATA / 'ravdess'} is absent")
        return

    figures: dict = {"features": args.features, "cpus": os.cpu_count()}
    work = tempfile.mkdtemp(prefix="cmbert-bench-preprocess-")
    try:
        for words, n in (("align", args.clips), ("asr", args.asr_clips)):
            rows = ravdess_dev_rows(n)
            fig = {"sequential": sequential(rows, words, args.features, args.threads)}
            print(f"[bench] {words} sequential: {fig['sequential']['x_realtime']}x realtime "
                  f"({fig['sequential']['stage_x_realtime']})", flush=True)
            if not args.skip_ray:
                if "ray_init_s" not in figures:
                    from cmbert.raysetup import init_ray

                    t0 = time.perf_counter()
                    init_ray()
                    figures["ray_init_s"] = round(time.perf_counter() - t0, 2)
                fig["ray"] = ray_job(rows, words, args.features, work)
                # The job again on a tenth of the clips: T(audio) = fixed + audio / steady rate separates start-up
                # from throughput (two sizes, one run each). Too few clips for two sizes: no fit.
                k = max(1, len(rows) // 10)
                if k < len(rows):
                    small = ray_job(rows[:k], words, args.features, work, "-small")
                    slope = ((fig["ray"]["wall_s"] - small["wall_s"])
                             / (fig["ray"]["audio_seconds"] - small["audio_seconds"]))
                    fig["ray_small"] = small
                    fig["ray_fixed_startup_s"] = round(small["wall_s"] - small["audio_seconds"] * slope, 1)
                    fig["ray_steady_x_realtime"] = round(1 / slope, 1) if slope > 0 else None
                seq = fig["sequential"]
                fig["ray_vs_sequential"] = round(fig["ray"]["x_realtime"] / seq["x_realtime_with_load"], 3)
                fig["ray_overhead_vs_sequential"] = round(seq["x_realtime_with_load"] / fig["ray"]["x_realtime"] - 1, 3)
                print(f"[bench] {words} ray: {fig['ray']['x_realtime']}x realtime, "
                      f"{fig['ray_vs_sequential']}x the sequential run", flush=True)
            figures[f"{words}_path"] = fig
        if (SHARED_DATA / "call-2spk" / "sample.wav").exists():
            figures["call_2spk"] = call_checks(args.features, args.threads)
            print(f"[bench] call: {figures['call_2spk']}", flush=True)
    finally:
        if not args.skip_ray:
            import ray

            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    write_result("preprocess", figures | {"config": vars(args)}, notes=(
        "x realtime = audio seconds / wall seconds. sequential = cmbert.pipeline.process_clip in one process "
        "(2 threads), stage timers around the pipeline's own stage functions, models loaded once "
        "(x_realtime excludes the load, x_realtime_with_load includes it); ray = jobs/preprocess.py main() "
        "end to end (actor start, model loads per actor, Parquet writes) with Ray already started "
        "(ray_init_s). Whisper pads every input to 30 s, so ASR costs far more per second on short clips."))


if __name__ == "__main__":
    main()
