"""Run every benchmark, then write bench/results/summary.md: the headline figures of each results JSON.

    python bench/run_all.py [--only NAME ...] [--quality] [--summary-only] [--timeout SECONDS]

`make bench` runs the cost benchmarks (speed, MFU, memory, scale): about 14 minutes on 2 cores. The model-quality
evaluations (QUALITY: MOSI and RAVDESS accuracy, 10-40 minutes each on 2 cores) run with ``--quality`` or
``--only NAME`` (`make bench-quality`); their last JSONs stay in the summary, marked with their own date.

Each ``bench/bench_*.py`` runs as its own subprocess with the venv's python, in ORDER (then any other
bench_*.py, alphabetically), with its output passed through; a failing bench is reported and the rest still
run. NAME is ``score``, ``bench_score`` or ``bench_score.py``. The summary is written from whatever results
JSONs exist, so ``--only`` refreshes one bench's rows and keeps the others (marked with their own date and
git sha); a bench without a JSON, or a figure missing from one, shows as a dash. Exit status 1 when a bench failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
ORDER = ("preprocess", "train", "score", "memory", "driver", "gpu", "diarize", "delta",
         "scale")  # scale reads the others' JSONs: last
QUALITY = ("mosi", "ravdess")  # accuracy, not cost (MOSI: up to 2 h on 2 cores): only with --quality or --only


@dataclass(frozen=True)
class Figure:
    label: str
    path: str  # keys into the JSON's "figures", joined by "/" (keys may contain dots)
    unit: str = ""  # "%" multiplies by 100
    digits: int = 1


# bench name (bench_<name>.py writes results/<name>.json) -> the figures the summary shows.
HEADLINES: dict[str, list[Figure]] = {
    "preprocess": [
        Figure("align path, Ray job end to end", "align_path/ray/x_realtime", "x realtime"),
        Figure("align path, sequential (incl. model load)", "align_path/sequential/x_realtime_with_load", "x realtime"),
        Figure("align path, Ray vs sequential", "align_path/ray_vs_sequential", "x", 2),
        Figure("align path, Ray steady state (two-size fit)", "align_path/ray_steady_x_realtime", "x realtime"),
        Figure("align path, Ray fixed start-up", "align_path/ray_fixed_startup_s", " s"),
        Figure("align path stages, x realtime (sequential)", "align_path/sequential/stage_x_realtime"),
        Figure("ASR path, Ray job end to end", "asr_path/ray/x_realtime", "x realtime"),
        Figure("ASR path, Ray vs sequential", "asr_path/ray_vs_sequential", "x", 2),
        Figure("ASR WER vs RAVDESS transcripts", "asr_path/sequential/wer_vs_manifest", "%"),
        Figure("call: DER, collar 0.5 s", "call_2spk/der_collar_0.5", "%"),
        Figure("call: ASR WER", "call_2spk/asr_wer", "%"),
    ],
    "diarize": [
        Figure("default diarizer", "default_diarizer"),
        Figure("pyannote: call DER, collar 0", "pyannote/call/der_collar_0", "%"),
        Figure("pyannote: RAVDESS mixes DER, collar 0", "pyannote/mixes/der_collar_0", "%"),
        Figure("pyannote: x realtime per CPU second", "pyannote/mixes/x_realtime_per_cpu_second", "x realtime"),
        Figure("dvector: call DER, collar 0", "dvector/call/der_collar_0", "%"),
        Figure("dvector: RAVDESS mixes DER, collar 0", "dvector/mixes/der_collar_0", "%"),
        Figure("dvector: x realtime per CPU second", "dvector/mixes/x_realtime_per_cpu_second", "x realtime"),
    ],
    "train": [
        Figure("plain loop, 2 threads", "plain_2_threads/samples_per_s", " samples/s"),
        Figure("plain loop MFU (fp32, vs 167 GFLOP/s)", "plain_2_threads/mfu_fp32", "%"),
        Figure("Ray Train 2 workers x 1 thread", "ray_ddp_2_workers_1_thread/samples_per_s", " samples/s"),
        Figure("Ray Train 2x1 MFU", "ray_ddp_2_workers_1_thread/mfu_fp32", "%"),
        Figure("Ray Train 2x1 overhead vs plain", "ray_ddp_2_workers_1_thread/overhead_vs_plain", "%", 0),
        Figure("Ray Train 1x2 overhead vs plain", "ray_ddp_1_worker_2_threads/overhead_vs_plain", "%", 0),
        Figure("Ray Train 2x1 fit() wall time", "ray_ddp_2_workers_1_thread/fit_s", " s"),
    ],
    "memory": [
        Figure("preprocess peak PSS, 1x corpus", "preprocess/corpus_1x/peak_pss_mib", " MiB", 0),
        Figure("preprocess peak PSS, 4x corpus", "preprocess/corpus_4x/peak_pss_mib", " MiB", 0),
        Figure("preprocess 4x / 1x", "preprocess/ratio_4x_over_1x", "x", 2),
        Figure("score peak PSS, 1x corpus", "score/corpus_1x/peak_pss_mib", " MiB", 0),
        Figure("score peak PSS, 4x corpus", "score/corpus_4x/peak_pss_mib", " MiB", 0),
        Figure("score 4x / 1x", "score/ratio_4x_over_1x", "x", 2),
    ],
    "scale": [
        Figure("align path: video h per node-h, this machine", "align_path/measured_this_machine/video_hours_per_node_hour"),
        Figure("align path: 100k h on 100 such machines", "align_path/measured_this_machine/wall_hours_for_job", " h wall"),
        Figure("align path: 100k h on 100 16-core nodes (estimate)", "align_path/estimate_cpu_node_16_cores/wall_hours_for_job", " h wall"),
        Figure("ASR path: video h per node-h, this machine", "asr_path/measured_this_machine/video_hours_per_node_hour", digits=2),
        Figure("ASR path: 100k h on 100 16-core nodes (estimate)", "asr_path/estimate_cpu_node_16_cores/wall_hours_for_job", " h wall"),
    ],
    "score": [
        Figure("batched fp32 (median)", "fp32/batched/utterances_per_s/median", " utt/s"),
        Figure("naive one-at-a-time fp32 (median)", "fp32/naive/utterances_per_s/median", " utt/s"),
        Figure("batched / naive fp32 (median of pairs)", "fp32/batched_over_naive/median", "x", 2),
        Figure("batched fp32 MFU vs STACK.md peak", "fp32/batched/mfu_vs_stack_peak/median", "%"),
        Figure("batched fp32 MFU vs local matmul peak", "fp32/batched/mfu_vs_local_peak/median", "%"),
        Figure("jobs/score.py via Ray Data (median)", "ray/utterances_per_s/median", " utt/s"),
        Figure("Ray overhead vs batched, same rows", "ray/overhead_vs_batched", "%", 0),
        Figure("Ray time to first row (median)", "ray/time_to_first_row_s/median", " s"),
        Figure("Ray fixed start-up (two-size fit)", "ray/fixed_startup_s", " s"),
        Figure("Ray steady-state overhead vs batched", "ray/steady_overhead_vs_batched", "%", 0),
        Figure("one 1-thread process per core (the job's layout)", "fp32_per_core_processes/utterances_per_s/median", " utt/s"),
        Figure("  its MFU vs STACK.md peak", "fp32_per_core_processes/mfu_vs_stack_peak/median", "%"),
        Figure("  its ratio to naive", "fp32_per_core_processes/over_naive", "x", 2),
    ],
    "driver": [
        Figure("preprocess: driver CPU per 1,000 utterances (steady)", "preprocess/steady/driver_cpu_s_per_1000_utterances", " s", 3),
        Figure("preprocess: driver CPU / workers' CPU (steady)", "preprocess/steady/driver_over_cluster_cpu_pct", " %", 3),
        Figure("preprocess: driver peak RSS 4x / 1x", "preprocess/steady/driver_rss_4x_over_1x", "x", 2),
        Figure("score: driver CPU per 1,000 utterances (steady)", "score/steady/driver_cpu_s_per_1000_utterances", " s", 3),
        Figure("score: driver CPU / workers' CPU (steady)", "score/steady/driver_over_cluster_cpu_pct", " %", 3),
        Figure("score: driver peak RSS 4x / 1x", "score/steady/driver_rss_4x_over_1x", "x", 2),
        Figure("executor: fixed driver CPU-s/s, 2 actors (model)", "executor/model/jobs/fixed_cpu_s_per_s", "", 3),
        Figure("executor: driver CPU per task (model)", "executor/model/jobs/per_task_cpu_ms", " ms", 2),
        Figure("score: driver / workers' CPU at 16 worker cores (model)",
               "score/model/driver_over_worker_cpu_pct_at_worker_cores/16", " %", 2),
        Figure("score: worker cores one driver feeds (model)", "score/model/max_worker_cores_per_driver", "", 0),
    ],
    "delta": [  # bench_delta.py: skips (leaving the last JSON) without the delta extra
        Figure("score, 16k rows: ours wall (append)", "a_score_one_commit/16000/ours/append/wall_s", " s", 2),
        Figure("score, 16k rows: write_delta wall (append)", "a_score_one_commit/16000/delta/append/wall_s", " s", 2),
        Figure("score, 16k rows: ours commit (append)", "a_score_one_commit/16000/ours/append/commit_s", " s", 3),
        Figure("score, 16k rows: Delta commit (append)", "a_score_one_commit/16000/delta/append/commit_s", " s", 3),
        Figure("per batch: ours publish (median)", "b_preprocess_publish_as_you_go/ours_publish_as_you_go/latency_median_s",
               " s", 3),
        Figure("per batch: Delta commit (median)", "b_preprocess_publish_as_you_go/delta_commit_per_batch/latency_median_s",
               " s", 3),
        Figure("killed write task: Delta rows / distinct ids", "c_exactly_once/delta_killed_task/rows", digits=0),
    ],
    "ravdess": [
        Figure("dev majority rate (non0)", "dev_majority/rate", digits=3),
        Figure("T-BERT non0 acc2", "models/tbert/non0_acc2_mean", digits=3),
        Figure("CM-BERT as published non0 acc2", "models/paper/non0_acc2_mean", digits=3),
        Figure("audio at [CLS] only non0 acc2", "models/attention/non0_acc2_mean", digits=3),
        Figure("audio in the values only non0 acc2", "models/values/non0_acc2_mean", digits=3),
        Figure("default variant non0 acc2", "models/variant/non0_acc2_mean", digits=3),
        Figure("eGeMAPS functionals + logistic regression", "classical_baseline/non0_acc2", digits=3),
        Figure("word features + logistic regression", "linear_probe_word_features/non0_acc2", digits=3),
    ],
    "gpu": [
        Figure("device", "device"),
        Figure("score: jobs' pure function, batch 1024, fp32", "score/fp32/batched_1024/utterances_per_s/median",
               " utt/s", 0),
        Figure("score: one at a time, fp32", "score/fp32/naive/utterances_per_s", " utt/s", 0),
        Figure("score: model alone, bf16, MFU vs measured bf16 peak", "score/bf16/model_only_1024/mfu_vs_measured_peak/median", "%"),
        Figure("score: model alone, fp32, MFU vs measured fp32 peak", "score/fp32/model_only_1024/mfu_vs_measured_peak/median", "%"),
        Figure("train: train_func, batch 24, fp32", "train/fp32_batch24/rows_per_s", " rows/s", 0),
        Figure("train: train_func, batch 256, fp32", "train/fp32_batch256/rows_per_s", " rows/s", 0),
        Figure("MOSI dev T-BERT non0 acc2 (5 seeds)", "mosi/models/tbert/non0_acc2/mean", digits=3),
        Figure("MOSI dev paper non0 acc2 (5 seeds)", "mosi/models/paper/non0_acc2/mean", digits=3),
        Figure("MOSI dev variant non0 acc2 (5 seeds)", "mosi/models/variant/non0_acc2/mean", digits=3),
    ],
    "gpu-ravdess": [
        Figure("T-BERT non0 acc2 (5 seeds)", "ravdess/models/tbert/non0_acc2/mean", digits=3),
        Figure("CM-BERT as published", "ravdess/models/paper/non0_acc2/mean", digits=3),
        Figure("audio at [CLS] only", "ravdess/models/attention/non0_acc2/mean", digits=3),
        Figure("audio in the values only", "ravdess/models/values/non0_acc2/mean", digits=3),
        Figure("default variant", "ravdess/models/variant/non0_acc2/mean", digits=3),
        Figure("default variant, std over seeds", "ravdess/models/variant/non0_acc2/std", digits=3),
    ],
    "mosi": [
        Figure(f"{enc} {model} {metric} (dev)", f"models/{enc}_{model}/mean_std/{metric}/mean", digits=3)
        for model in ("cmbert", "tbert") for enc in ("mpnet", "minilm") for metric in ("non0_acc2", "mae", "corr")
    ] + [Figure(f"{enc} cmbert seeds", f"seeds_run/{enc}_cmbert", digits=0) for enc in ("mpnet", "minilm")]
    + [Figure(f"{enc} cmbert train MFU (in loop)", f"models/{enc}_cmbert/mfu_fp32_in_loop", "%")
       for enc in ("mpnet", "minilm")],
}
# Cost figures with the small encoder beside the default's (bench_train.py / bench_score.py --encoder minilm).
HEADLINES["train-minilm"] = HEADLINES["train"]
HEADLINES["score-minilm"] = HEADLINES["score"]


def bench_names() -> list[str]:
    found = sorted(p.stem[len("bench_"):] for p in BENCH.glob("bench_*.py"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def normalise(name: str) -> str:
    name = Path(name).name
    name = name[:-3] if name.endswith(".py") else name
    return name[len("bench_"):] if name.startswith("bench_") else name


def venv_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_bench(name: str, timeout: float | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYANNOTE_METRICS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    cmd = [venv_python(), str(BENCH / f"bench_{name}.py")]
    print(f"[run_all] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout).returncode
        error = None if rc == 0 else f"exit status {rc}"
    except subprocess.TimeoutExpired:
        rc, error = None, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    print(f"[run_all] {name}: {'ok' if error is None else 'FAILED: ' + error} in {seconds:.0f} s", flush=True)
    return {"name": name, "error": error, "seconds": seconds, "started": time.time() - seconds}


def lookup(doc: dict, path: str):
    value = doc.get("figures", {})
    for key in path.split("/"):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def fmt(value, fig: Figure) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if fig.unit == "%":
        return f"{100 * value:.{fig.digits}f}%"
    return f"{value:.{fig.digits}f}{fig.unit}"


def summary_markdown(names: list[str], runs: dict[str, dict]) -> str:
    lines = ["# Benchmark summary", "",
             f"Written by `python bench/run_all.py` at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}. "
             "Full figures, machine and command: `bench/results/<bench>.json`. The CPU may be shared when "
             "measured: compare ratios within one bench run, not absolute figures across runs.", "",
             "| bench | this run | results from (git) | figure | value |", "|---|---|---|---|---|"]
    for name in names + sorted(set(HEADLINES) - set(names)):
        path = RESULTS / f"{name}.json"
        run = runs.get(name)
        status = "not run" if run is None else ("ok" if run["error"] is None else f"FAILED ({run['error']})")
        if run is not None:
            status += f", {run['seconds']:.0f} s"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            why = "no results file" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc}"
            lines.append(f"| {name} | {status} | {why} | | |")
            continue
        stale = run is not None and path.stat().st_mtime < run["started"]
        origin = f"{doc.get('time', '?')} ({doc.get('git', '?')})" + (" STALE" if stale else "")
        figures = HEADLINES.get(name) or [Figure(k, k, digits=3) for k, v in doc.get("figures", {}).items()
                                          if isinstance(v, (int, float))][:6]
        if not figures:
            lines.append(f"| {name} | {status} | {origin} | (no headline figures registered) | |")
        for i, fig in enumerate(figures):
            head = f"{name} | {status} | {origin}" if i == 0 else " | | "
            lines.append(f"| {head} | {fig.label} | {fmt(lookup(doc, fig.path), fig)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this bench (repeatable)")
    ap.add_argument("--quality", action="store_true", help=f"also run the accuracy evaluations ({', '.join(QUALITY)})")
    ap.add_argument("--summary-only", action="store_true", help="run nothing; rewrite summary.md from the JSONs")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per bench (default: none)")
    args = ap.parse_args(argv)
    names = bench_names()
    selected = names if args.quality else [n for n in names if n not in QUALITY]
    if args.only:
        selected = [normalise(n) for n in args.only]
        unknown = [n for n in selected if n not in names]
        if unknown:
            print(f"run_all: error: no bench/bench_{unknown[0]}.py (benches: {', '.join(names)})", file=sys.stderr)
            return 2
    runs = {}
    if not args.summary_only:
        for name in selected:
            runs[name] = run_bench(name, args.timeout)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "summary.md"
    out.write_text(summary_markdown(names, runs))
    print(f"[run_all] wrote {out}")
    failed = [r for r in runs.values() if r["error"] is not None]
    for r in failed:
        print(f"[run_all] FAILED {r['name']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
