"""What the driver costs: driver CPU per 1,000 utterances, driver CPU / cluster CPU, driver peak RSS; 1x and 4x.

    python bench/bench_driver.py [--code DIR] [--label after] [--clips 12] [--rows 2000] [--repeat 4]
                                 [--encoder minilm] [--skip-preprocess] [--skip-score]

Each job runs as its own process (``python jobs/<job>.py``, job defaults, its own local Ray) from ``--code`` (a
checkout: this tree by default; ``git worktree add --detach /tmp/cmbert-main main`` for the code before the
change). A sampler reads every process of the job's tree from /proc every 0.2 s: CPU seconds (utime + stime,
the largest value seen per process, so processes that exit keep their share) and the driver's resident memory.
The driver is the job's own process; "cluster" is all its descendants (Ray GCS, raylet, workers).

Steady state is the difference between the 4x and the 1x corpus (the same work repeated: start-up, model loads
and planning overheads cancel): driver CPU per 1,000 utterances = (D4 - D1) / (U4 - U1) * 1000 and the ratio
(D4 - D1) / (C4 - C1). Corpora are bench_memory.py's (RAVDESS dev clips; synthetic utterances for score, scored
by bench_score.py's checkpoint on ``--encoder``, MiniLM by default). Target: ratio <= 0.5% for both jobs; driver peak RSS 4x within 20% of 1x.
Writes bench/results/driver.json (``--label after``, the default) or driver-<label>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_memory import SCORE_ROWS_PER_FILE, _tree, preprocess_corpus, score_corpus  # noqa: E402
from common import REPO, RESULTS, SHARED_DATA, run_sampled, write_result  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))
from preprocess import MAX_CLIPS_PER_BATCH  # noqa: E402

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


# a full task's utterances at scale: preprocess's largest batch (one utterance per short clip), score's input file
ITEMS_PER_TASK = {"preprocess": MAX_CLIPS_PER_BATCH, "score": SCORE_ROWS_PER_FILE}
WORKER_CORES = (2, 16, 64, 1600)  # the model's ratio at these cluster sizes (one actor per worker core)


def executor_model(work: str) -> dict:
    """``profile_driver.py pool`` (this tree, the jobs' Ray Data settings): the streaming
    executor's fixed driver CPU per second (2, 8 and 32 actors) and its driver CPU per task."""
    out = f"{work}/pool.json"
    cmd = [sys.executable, str(REPO / "bench" / "profile_driver.py"), "pool", "--contexts", "jobs", "--out", out]
    subprocess.run(cmd, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)), check=True,
                   stdout=open(f"{work}/pool.log", "w"), stderr=subprocess.STDOUT)

    pool = json.loads(open(out).read())
    return {"model": pool["model"], "runs": pool["runs"]}


def fixed_at(model: dict, actors: int) -> float:
    """The fixed driver CPU-s/s with ``actors`` pool actors: linear from the 2-actor figure to the largest pool
    measured (8 or 32 actors), extrapolated beyond it with the same slope; never below the 2-actor figure."""
    f2 = model["fixed_cpu_s_per_s"]
    sizes = sorted(int(k.split("_")[-2]) for k in model if k.startswith("fixed_cpu_s_per_s_") and k.endswith("_actors"))
    if not sizes:
        return f2
    big = sizes[-1]
    slope = (model[f"fixed_cpu_s_per_s_{big}_actors"] - f2) / (big - 2)
    return max(f2, f2 + slope * (actors - 2))


def job_model(fig: dict, fixed: dict, repeat: int, items_per_task: int) -> dict:
    """driver CPU = fixed x wall + variable x utterances, with ``fixed`` from the executor model: the variable
    part from the 4x - 1x difference, but never below the executor's per-task cost spread over a full task's
    ``items_per_task`` utterances (a part the steady difference cannot resolve on this machine); the ratio it
    implies at other cluster sizes (workers' CPU per utterance as measured here, one actor per core)."""
    repeat = max(int(k[len("corpus_"):-1]) for k in fig if k.startswith("corpus_"))  # a merged job's own
    small, big = fig["corpus_1x"], fig[f"corpus_{repeat}x"]
    du = big["utterances"] - small["utterances"]
    d, c = big["driver_cpu_s"] - small["driver_cpu_s"], big["cluster_cpu_s"] - small["cluster_cpu_s"]
    wall = big["wall_s"] - small["wall_s"]
    # driver CPU-s per utterance; below the noise of one run's start-up (about +-0.5 CPU-s here) it reads <= 0
    measured = (d - fixed["fixed_cpu_s_per_s"] * wall) / du
    floor = fixed["per_task_cpu_ms"] / 1000 / items_per_task
    variable = max(measured, floor)
    worker = c / du  # workers' CPU-s per utterance
    ratio = {n: round(100 * (fixed_at(fixed, n) / n + variable / worker), 3) for n in WORKER_CORES}
    # one driver core is saturated at fixed(n) + n x variable / worker = 1
    cores = next((n for n in range(2, 100_001) if fixed_at(fixed, n) + n * variable / worker >= 1.0), None)
    return {"fixed_cpu_s_per_s": fixed["fixed_cpu_s_per_s"], "variable_below_noise": d <= fixed["fixed_cpu_s_per_s"] * wall,
            "variable_is_the_per_task_floor": measured < floor, "items_per_task": items_per_task,
            "variable_driver_cpu_s_per_1000_utterances": round(1000 * variable, 3),
            "worker_cpu_s_per_1000_utterances": round(1000 * worker, 2),
            "driver_over_worker_cpu_pct_at_worker_cores": ratio,
            "max_worker_cores_per_driver": cores}


def run_jobs(code: str, work: str, args) -> dict:
    py = sys.executable
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=code, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=code, capture_output=True,
                           text=True).stdout.strip()
    figures: dict = {"code": code, "code_sha": sha + ("+dirty" if dirty else ""), "repeat": args.repeat}
    tag = hashlib.sha256(code.encode()).hexdigest()[:8]
    if not args.skip_preprocess and (SHARED_DATA / "ravdess" / "manifest.csv").exists():
        fig = {"clips": args.clips}
        for repeat in (1, args.repeat):
            clips = f"{work}/clips-{repeat}"
            manifest = f"{clips}/manifest.csv"
            if not os.path.exists(manifest):
                preprocess_corpus(clips, args.clips, repeat)
            out = f"{work}/pre-{tag}-{repeat}"
            cmd = [py, "jobs/preprocess.py", "--input", clips, "--manifest", manifest, "--output", out]
            fig[f"corpus_{repeat}x"] = measure(cmd, code, f"{out}.log") | {"utterances": utterances(out)}
            print(f"[bench] {code} preprocess {repeat}x: {fig[f'corpus_{repeat}x']}", flush=True)
        fig["steady"] = steady(fig["corpus_1x"], fig[f"corpus_{args.repeat}x"], fig["corpus_1x"]["utterances"],
                               fig[f"corpus_{args.repeat}x"]["utterances"])
        figures["preprocess"] = fig
    if not args.skip_score:
        fig = {"rows": args.rows, "encoder": args.encoder}
        for repeat in (1, args.repeat):
            if not os.path.exists(f"{work}/utt-{repeat}"):
                score_corpus(f"{work}/utt-{repeat}", args.rows, repeat)
            out = f"{work}/scores-{tag}-{repeat}"
            cmd = [py, "jobs/score.py", "--checkpoint", f"{work}/checkpoint", "--input", f"{work}/utt-{repeat}",
                   "--output", out, "--score-date", "2024-01-02"]
            fig[f"corpus_{repeat}x"] = measure(cmd, code, f"{out}.log") | {"utterances": args.rows * repeat}
            print(f"[bench] {code} score {repeat}x: {fig[f'corpus_{repeat}x']}", flush=True)
        fig["steady"] = steady(fig["corpus_1x"], fig[f"corpus_{args.repeat}x"], args.rows, args.rows * args.repeat)
        figures["score"] = fig
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", default=str(REPO))
    ap.add_argument("--before", help="a checkout of the code before the change: measured in the same run, "
                    "written as driver-before.json")
    ap.add_argument("--label", default="after")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--encoder", default="minilm", help="the score checkpoint's encoder: MiniLM, the cheapest "
                    "worker per utterance, so the driver's share is the largest (the earlier figures' encoder)")
    ap.add_argument("--skip-preprocess", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    ap.add_argument("--skip-model", action="store_true", help="no executor model (profile_driver.py pool)")
    ap.add_argument("--merge", action="store_true", help="keep the figures this run skips (a job, the model) "
                    "from the result files already written (one job per run fits a 10-minute slot)")
    args = ap.parse_args()
    notes = ("CPU seconds from /proc/PID/stat (utime+stime, max seen per process, sampled every 0.2 s) of the job's "
             "process (driver) and its descendants (Ray GCS, raylet, workers: 'cluster'). steady = 4x minus 1x "
             "(start-up cancels). model: driver CPU = fixed x wall + variable x utterances, fixed from "
             "profile_driver.py pool (the executor draining sleeping actors), variable from steady; the ratio "
             "at N worker cores = fixed(N actors)/N + variable/workers' CPU per utterance. Measured on the "
             "shared 2-core machine, under flock.")
    work = tempfile.mkdtemp(prefix="cmbert-bench-driver-")
    try:
        if not args.skip_score:
            from bench_score import make_checkpoint

            make_checkpoint(f"{work}/checkpoint", args.encoder)
        executor = None if args.skip_model else executor_model(work)
        codes = [(args.label, args.code)] + ([("before", args.before)] if args.before else [])
        results = {label: run_jobs(code, work, args) for label, code in codes}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for label, figures in results.items():
        name = "driver" if label == "after" else f"driver-{label}"
        if args.merge and (RESULTS / f"{name}.json").exists():
            old = json.loads((RESULTS / f"{name}.json").read_text())["figures"]
            kept = {k: old[k] for k in ("preprocess", "score", "executor") if k in old and k not in figures}
            if executor is None and "executor" in kept:
                executor = kept["executor"]
            figures = kept | figures
            results[label] = figures
        if executor is not None and label == args.label:  # the model is this tree's (its Ray Data settings)
            figures["executor"] = executor
            for job in ("preprocess", "score"):
                if job in figures:
                    figures[job]["model"] = job_model(figures[job], executor["model"]["jobs"], args.repeat,
                                                      ITEMS_PER_TASK[job])
        if args.before:
            figures["before_code"] = args.before
        write_result(name, figures | {"config": vars(args)}, notes=notes)


if __name__ == "__main__":
    main()
