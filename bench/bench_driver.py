"""What the driver costs: driver CPU per 1,000 utterances, driver CPU / cluster CPU, driver peak RSS; 1x and 4x.

    python bench/bench_driver.py [--code DIR] [--label after] [--clips 12] [--rows 2000] [--repeat 4]
                                 [--skip-preprocess] [--skip-score]

Each job runs as its own process (``python jobs/<job>.py``, job defaults, its own local Ray) from ``--code`` (a
checkout: this tree by default; ``git worktree add --detach /tmp/cmbert-main main`` for the code before the
change). A sampler reads every process of the job's tree from /proc every 0.2 s: CPU seconds (utime + stime,
the largest value seen per process, so processes that exit keep their share) and the driver's resident memory.
The driver is the job's own process; "cluster" is all its descendants (Ray GCS, raylet, workers).

Steady state is the difference between the 4x and the 1x corpus (the same work repeated: start-up, model loads
and planning overheads cancel): driver CPU per 1,000 utterances = (D4 - D1) / (U4 - U1) * 1000 and the ratio
(D4 - D1) / (C4 - C1). Corpora are bench_memory.py's (RAVDESS dev clips; synthetic utterances for score, scored
by bench_score.py's checkpoint). Target: ratio <= 0.5% for both jobs; driver peak RSS 4x within 20% of 1x.
Writes bench/results/driver.json (``--label after``, the default) or driver-<label>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_memory import _tree, preprocess_corpus, score_corpus  # noqa: E402
from common import REPO, SHARED_DATA, run_sampled, write_result  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15 of stat)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CpuSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in _tree(self.pid):
                c = _cpu_s(p)
                if c is not None:
                    self.cpu[p] = max(self.cpu.get(p, 0.0), c)
            self.peak_rss = max(self.peak_rss, _rss(self.pid))
            self.stop.wait(self.interval)


def measure(cmd: list[str], code: str, log: str) -> dict:
    sampler, wall = run_sampled(cmd, code, dict(os.environ, PYTHONPATH=code), log, CpuSampler)
    proc_pid = sampler.pid
    driver = sampler.cpu.get(proc_pid, 0.0)
    cluster = sum(v for p, v in sampler.cpu.items() if p != proc_pid)
    return {"driver_cpu_s": round(driver, 2), "cluster_cpu_s": round(cluster, 2),
            "driver_peak_rss_mib": round(sampler.peak_rss / MIB, 1), "wall_s": round(wall, 1)}


def steady(small: dict, big: dict, units_small: int, units_big: int) -> dict:
    d = big["driver_cpu_s"] - small["driver_cpu_s"]
    c = big["cluster_cpu_s"] - small["cluster_cpu_s"]
    return {"driver_cpu_s_per_1000_utterances": round(1000 * d / max(units_big - units_small, 1), 3),
            "driver_over_cluster_cpu_pct": round(100 * d / c, 3) if c > 0 else None,
            "driver_over_cluster_cpu_pct_whole_run_1x": round(100 * small["driver_cpu_s"] / small["cluster_cpu_s"], 3),
            "driver_rss_4x_over_1x": round(big["driver_peak_rss_mib"] / small["driver_peak_rss_mib"], 3)}


def utterances(out: str) -> int:
    import pyarrow.dataset as pads

    return pads.dataset(f"{out}/utterances", format="parquet").count_rows()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", default=str(REPO))
    ap.add_argument("--label", default="after")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--skip-preprocess", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=args.code, capture_output=True,
                         text=True).stdout.strip()
    figures: dict = {"code": args.code, "code_sha": sha, "repeat": args.repeat}
    work = tempfile.mkdtemp(prefix="cmbert-bench-driver-")
    try:
        if not args.skip_preprocess and (SHARED_DATA / "ravdess" / "manifest.csv").exists():
            fig = {"clips": args.clips}
            n = {}
            for repeat in (1, args.repeat):
                manifest = preprocess_corpus(f"{work}/clips-{repeat}", args.clips, repeat)
                cmd = [py, "jobs/preprocess.py", "--input", f"{work}/clips-{repeat}", "--manifest", manifest,
                       "--output", f"{work}/pre-{repeat}"]
                fig[f"corpus_{repeat}x"] = measure(cmd, args.code, f"{work}/pre-{repeat}.log")
                n[repeat] = utterances(f"{work}/pre-{repeat}")
                fig[f"corpus_{repeat}x"]["utterances"] = n[repeat]
                print(f"[bench] preprocess {repeat}x: {fig[f'corpus_{repeat}x']}", flush=True)
            fig["steady"] = steady(fig["corpus_1x"], fig[f"corpus_{args.repeat}x"], n[1], n[args.repeat])
            figures["preprocess"] = fig
        if not args.skip_score:
            from bench_score import make_checkpoint

            make_checkpoint(f"{work}/checkpoint")
            fig = {"rows": args.rows}
            for repeat in (1, args.repeat):
                score_corpus(f"{work}/utt-{repeat}", args.rows, repeat)
                cmd = [py, "jobs/score.py", "--checkpoint", f"{work}/checkpoint", "--input", f"{work}/utt-{repeat}",
                       "--output", f"{work}/scores-{repeat}", "--score-date", "2024-01-02"]
                fig[f"corpus_{repeat}x"] = measure(cmd, args.code, f"{work}/score-{repeat}.log") | {
                    "utterances": args.rows * repeat}
                print(f"[bench] score {repeat}x: {fig[f'corpus_{repeat}x']}", flush=True)
            fig["steady"] = steady(fig["corpus_1x"], fig[f"corpus_{args.repeat}x"], args.rows,
                                   args.rows * args.repeat)
            figures["score"] = fig
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("driver" if args.label == "after" else f"driver-{args.label}", figures | {"config": vars(args)}, notes=(
        "CPU seconds from /proc/PID/stat (utime+stime, max seen per process, sampled every 0.2 s) of the job's "
        "process (driver) and its descendants (Ray GCS, raylet, workers: 'cluster'). steady = 4x minus 1x "
        "(start-up cancels). Measured on the shared 2-core machine (5 agents), under flock."))


if __name__ == "__main__":
    main()
