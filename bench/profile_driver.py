"""Where the driver's CPU goes: per thread, per second and per task, with an optional in-process profile.

    python bench/profile_driver.py preprocess|score [--clips 40] [--rows 4000] [--repeat 1] [--cprofile]
                                                    [--top 25] [--out FILE.json]
    python bench/profile_driver.py pool [--contexts ray jobs] [--scenarios slow fast slow8 slow32] [--repeat 1]
                                        [--out FILE.json] [--results NAME]

py-spy cannot attach on this machine, so the job runs in this process (``jobs.<job>.main``, the job's defaults,
its own local Ray, the quiet console on) and is measured from inside:

- **per thread** (``/proc/self/task/*/stat``, utime + stime): Python threads by their ``threading`` name (the
  main thread, Ray Data's ``StreamingExecutor-*``, the console filter, ...), native ones (Ray's core worker,
  gRPC) by their kernel name; at the start and the end of the run's ``incremental.drain`` (the actor pool's
  dataset: the steady part of the job) and of the whole run;
- **per task**: the manifest blocks (one per worker batch) and utterances the drain received, so the window's
  driver CPU reads as CPU-s per second of wall time and per 1,000 utterances;
- with ``--cprofile``, a ``cProfile`` of every Python thread started during the drain (through
  ``threading.setprofile``) and of the main thread in it: the top functions by own time, per thread, and the
  calls of Ray Data's scheduling loop (steps, and their cost per step). cProfile slows Python code down, so its
  times are for the split, not for the totals (those come from a run without it).
The corpora are bench_driver.py's. Prints a summary; ``--out`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_memory import preprocess_corpus, score_corpus  # noqa: E402
from common import REPO  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def data_context() -> None:
    from cmbert.raysetup import data_context as jobs_context

    jobs_context()


def process_cpu() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class ThreadSampler(threading.Thread):
    """Every ``interval`` s, each thread's CPU so far: a thread that ends keeps what it had at its last sample."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True, name="profile-sampler")
        self.interval, self.seen, self.stop = interval, {}, threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.snapshot()

    def snapshot(self) -> dict[int, tuple[str, float]]:
        now = threads_cpu()
        with self.lock:
            for tid, (name, cpu) in now.items():
                old = self.seen.get(tid)
                self.seen[tid] = (name if old is None or old[0].startswith("[") else old[0], cpu)
            return dict(self.seen)


def threads_cpu() -> dict[int, tuple[str, float]]:
    """{tid: (name, CPU seconds)} of this process's threads now."""
    py = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (py.get(int(tid), f"[{comm}]"), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def group(name: str) -> str:
    """Threads of one kind under one name (the executor threads of several datasets, Ray's numbered pools)."""
    for prefix in ("StreamingExecutor-", "Thread-", "ThreadPoolExecutor-"):
        if name.startswith(prefix):
            return prefix + "*"
    return name.rstrip("0123456789") + ("*" if name[-1:].isdigit() else "")


def delta(a: dict, b: dict) -> dict[str, float]:
    """CPU seconds per thread group between two snapshots (threads that ended keep what they had at ``a``: 0)."""
    out: dict[str, float] = {}
    for tid, (name, cpu) in b.items():
        d = cpu - a.get(tid, (name, 0.0))[1]
        out[group(name)] = out.get(group(name), 0.0) + d
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


class ThreadProfiles:
    """One cProfile per Python thread started while installed (and, optionally, the current thread)."""

    def __init__(self):
        self.profiles: dict[str, cProfile.Profile] = {}
        self.lock = threading.Lock()

    def _hook(self, frame, event, arg):
        prof = cProfile.Profile()
        with self.lock:
            name = threading.current_thread().name
            self.profiles[f"{name}#{len(self.profiles)}"] = prof
        prof.enable()  # replaces this hook for the thread

    def start(self) -> None:
        threading.setprofile(self._hook)
        main = cProfile.Profile()
        self.profiles["MainThread"] = main
        main.enable()

    def stop(self) -> None:
        threading.setprofile(None)
        self.profiles["MainThread"].disable()

    def report(self, top: int) -> dict:
        out = {}
        for name, prof in self.profiles.items():
            prof.create_stats()
            if not prof.stats:
                continue
            st = pstats.Stats(prof)
            total = sum(v[2] for v in st.stats.values())  # own time
            if total < 0.05:
                continue
            rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
            out[name] = {"own_time_s": round(total, 3), "top_own": [
                {"fn": f"{os.path.basename(k[0])}:{k[1]}:{k[2]}", "calls": v[1], "own_s": round(v[2], 4),
                 "cum_s": round(v[3], 4)} for k, v in rows]}
            cum = {}
            for k, v in st.stats.items():
                if k[2] in WATCH:
                    cum[f"{os.path.basename(k[0])}:{k[2]}"] = {"calls": v[1], "cum_s": round(v[3], 4),
                                                               "cum_ms_per_call": round(1000 * v[3] / max(v[1], 1), 3)}
            out[name]["watched"] = dict(sorted(cum.items(), key=lambda kv: -kv[1]["cum_s"]))
        return out


# Functions of Ray Data's scheduling loop and of our own per-manifest work whose cumulative time is reported.
WATCH = {"_scheduling_loop_step", "process_completed_tasks", "dispatch_next_task", "update_usages",
         "select_operator_to_run", "_refresh_progress_manager", "_update_stats_metrics", "try_trigger_scaling",
         "update_operator_states", "_report_current_usage", "wait", "refresh_state", "check", "on_execution_step",
         "add", "progress", "_publish", "publish_file", "iter_batches", "get_next", "get", "_log_op_metrics",
         "_debug_dump_topology", "update_execution_metrics", "get_object_locations", "run", "keep", "pump",
         "update_operator_progress", "refresh", "get_active_tasks", "on_data_ready", "_get_state_dict"}


# ---------------------------------------------------------------- the executor alone: fixed and per-task cost


class Sleeper:
    """A pool actor that costs no CPU: each batch sleeps ``seconds`` and returns one small row (a manifest's)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, batch):
        import pyarrow as pa

        time.sleep(self.seconds)
        return pa.table({"rows": [len(batch)]})


CONTEXTS = {
    # Ray Data's defaults, as a fresh DataContext has them
    "ray": lambda ctx: None,
    # the jobs' settings (cmbert/raysetup.py data_context)
    "jobs": None,
    # experiments on top of them, not settings of the jobs: no per-operator resource reservation (a cheaper
    # resource-manager update; it measured no cheaper), and the scheduling loop's wait for a finished task at
    # 0.5 s instead of 0.1 s (a module constant of Ray Data, no DataContext setting: how much of the fixed cost
    # is per loop step)
    "jobs-noreserve": lambda ctx: (data_context(), setattr(ctx, "op_resource_reservation_enabled", False)),
    "jobs-wait0.5": lambda ctx: (data_context(), setattr(_executor_state(), WAIT, 0.5)),
}
WAIT = "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"


def _executor_state():
    from ray.data._internal.execution import streaming_executor_state

    return streaming_executor_state
SCENARIOS = {  # name: (actors, seconds per task, tasks): tasks complete at actors / seconds per second
    "slow": (2, 4.0, 14),  # 0.5 tasks/s for ~28 s: the fixed per-second cost
    "fast": (2, 0.04, 500),  # ~50 tasks/s for ~10 s: the cost per task
    "slow8": (8, 4.0, 40),  # 2 tasks/s for ~20 s with 8 actors: does the fixed cost grow with the pool?
    "slow32": (32, 16.0, 96),  # 2 tasks/s for ~32 s with 32 actors: the same, 4x the pool (sleepers: no CPU)
}


def pool_run(context: str, actors: int, seconds: float, tasks: int, sampler: "ThreadSampler") -> dict:
    """Drain an actor pool of sleepers (a job's last stage without the work) under ``context``'s DataContext;
    driver CPU between the first and the last result (actor start-up excluded)."""
    import ray
    from ray.data.context import DataContext

    DataContext._set_current(DataContext())
    wait = getattr(_executor_state(), WAIT)
    data_context() if CONTEXTS[context] is None else CONTEXTS[context](DataContext.get_current())
    ds = ray.data.range(tasks, override_num_blocks=tasks).materialize().map_batches(  # planned, as the jobs'

        Sleeper, fn_constructor_args=(seconds,), batch_size=1, batch_format="pyarrow", num_cpus=0.9 * 2 / actors,
        compute=ray.data.ActorPoolStrategy(size=actors))
    n, first = 0, None
    for _ in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        n += 1
        if first is None:
            first = (time.monotonic(), sampler.snapshot(), process_cpu())
    last = (time.monotonic(), sampler.snapshot(), process_cpu())
    setattr(_executor_state(), WAIT, wait)
    threads = delta(first[1], last[1])
    wall = last[0] - first[0]
    cpu = last[2] - first[2] - threads.pop("profile-sampler", 0.0)
    return {"context": context, "actors": actors, "task_s": seconds, "tasks": n, "wall_s": round(wall, 2),
            "tasks_per_s": round((n - 1) / wall, 3), "driver_cpu_s": round(cpu, 3),
            "cpu_s_per_s": round(cpu / wall, 4),
            "threads_cpu_s_per_s": {k: round(v / wall, 4) for k, v in threads.items() if v / wall >= 0.0005}}


def fixed_and_per_task(slow: dict, fast: dict) -> dict:
    """Solve cpu/s = fixed + per_task x tasks/s from two rates."""
    per_task = (fast["cpu_s_per_s"] - slow["cpu_s_per_s"]) / (fast["tasks_per_s"] - slow["tasks_per_s"])
    fixed = slow["cpu_s_per_s"] - per_task * slow["tasks_per_s"]
    return {"fixed_cpu_s_per_s": round(fixed, 4), "per_task_cpu_ms": round(1000 * per_task, 3)}


def pool_growth(runs: list[dict]) -> dict:
    """Does the executor's fixed cost grow with the pool? Per repeat and context, the fixed driver CPU-s/s of
    each slow scenario (its CPU/s less its tasks at the same repeat's per-task cost), and the growth per actor
    from 2 actors to the largest pool: the repeats side by side, so the noise between them shows."""
    out = {}
    for key in sorted({(r["context"], r["repeat"]) for r in runs}):
        by = {r["scenario"]: r for r in runs if (r["context"], r["repeat"]) == key}
        if not {"slow", "fast"} <= set(by):
            continue
        per_task_s = fixed_and_per_task(by["slow"], by["fast"])["per_task_cpu_ms"] / 1000
        fixed = {r["actors"]: round(r["cpu_s_per_s"] - per_task_s * r["tasks_per_s"], 4)
                 for name, r in by.items() if name.startswith("slow")}
        big = max(fixed)
        out[f"{key[0]}, repeat {key[1]}"] = {
            "fixed_cpu_s_per_s_by_actors": fixed,
            "growth_ms_per_s_per_actor": round(1000 * (fixed[big] - fixed[2]) / (big - 2), 3) if big > 2 else None}
    return out


def pool_main(args) -> dict:
    from cmbert.console import quiet_console
    from cmbert.raysetup import init_ray

    quiet_console()
    init_ray()
    sampler = ThreadSampler()
    sampler.start()
    runs = [pool_run(c, *SCENARIOS[s], sampler) | {"scenario": s, "repeat": i}
            for i in range(args.repeat) for c in args.contexts for s in args.scenarios]
    sampler.stop.set()
    growth = pool_growth(runs)
    model = {}  # the first repeat's: fixed and per task at 2 actors, and the fixed part of every bigger pool
    for c in args.contexts:
        by = {r["scenario"]: r for r in runs if r["context"] == c and r["repeat"] == 0}
        if "slow" in by and "fast" in by:
            model[c] = fixed_and_per_task(by["slow"], by["fast"]) | {
                f"fixed_cpu_s_per_s_{n}_actors": f
                for n, f in growth[f"{c}, repeat 0"]["fixed_cpu_s_per_s_by_actors"].items() if n > 2}
    result = {"job": "pool", "runs": runs, "model": model, "pool_growth": growth}
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=("preprocess", "score", "pool"))
    ap.add_argument("--contexts", nargs="+", default=["ray", "jobs"], choices=list(CONTEXTS))
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--encoder", default="minilm", help="score: the checkpoint's encoder (bench_driver.py's)")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out")
    ap.add_argument("--results", help="pool: also write bench/results/NAME.json (command, machine, git)")
    args = ap.parse_args()
    if args.job == "pool":
        result = pool_main(args)
        if args.out:
            with open(args.out, "w") as f:
                f.write(json.dumps(result, indent=1) + "\n")
        if args.results:
            from common import write_result

            write_result(args.results, result, notes=(
                "profile_driver.py pool: an actor pool of sleeping actors drained by the jobs' Ray Data settings in "
                "this process; driver CPU from /proc/self between the first and last result. pool_growth: the "
                "fixed driver CPU-s/s by pool size, per repeat (2-core shared machine)."))
        return
    sys.path.insert(0, str(REPO / "jobs"))
    from cmbert import incremental
    from cmbert.console import quiet_console

    work = tempfile.mkdtemp(prefix="cmbert-profile-driver-")
    try:
        if args.job == "preprocess":
            manifest = preprocess_corpus(f"{work}/clips", args.clips, args.repeat)
            argv = ["--input", f"{work}/clips", "--manifest", manifest, "--output", f"{work}/out"]
        else:
            from bench_score import make_checkpoint

            make_checkpoint(f"{work}/checkpoint", args.encoder)
            score_corpus(f"{work}/utt", args.rows, args.repeat)
            argv = ["--checkpoint", f"{work}/checkpoint", "--input", f"{work}/utt", "--output", f"{work}/out",
                    "--score-date", "2024-01-02"]
        window: dict = {"blocks": 0, "manifest_rows": 0}
        profiles = ThreadProfiles() if args.cprofile else None
        drain, add = incremental.drain, incremental.Publisher.add

        def counted_add(self, manifest):
            window["blocks"] += 1
            window["manifest_rows"] += manifest.num_rows
            return add(self, manifest)

        sampler = ThreadSampler()
        sampler.start()

        def measured_drain(*a, **kw):
            window["t0"], window["cpu0"], window["proc0"] = time.monotonic(), sampler.snapshot(), process_cpu()
            if profiles:
                profiles.start()
            try:
                return drain(*a, **kw)
            finally:
                if profiles:
                    profiles.stop()
                window["t1"], window["cpu1"], window["proc1"] = time.monotonic(), sampler.snapshot(), process_cpu()

        incremental.drain, incremental.Publisher.add = measured_drain, counted_add
        job = __import__(f"jobs.{args.job}", fromlist=["main"])
        quiet_console()
        t0, cpu0, proc0 = time.monotonic(), sampler.snapshot(), process_cpu()
        rc = job.main(argv)
        t1, cpu1, proc1 = time.monotonic(), sampler.snapshot(), process_cpu()
        sampler.stop.set()
        import pyarrow.dataset as pads

        main_table = "utterances" if args.job == "preprocess" else "scores"
        utterances = pads.dataset(f"{work}/out/{main_table}", format="parquet", partitioning="hive").count_rows()
        wall = window["t1"] - window["t0"]
        steady = delta(window["cpu0"], window["cpu1"])
        whole = delta(cpu0, cpu1)
        # every thread's, those that ended included, less this sampler's own
        cpu = window["proc1"] - window["proc0"] - steady.pop("profile-sampler", 0.0)
        result = {
            "job": args.job, "argv_corpus": {"clips": args.clips, "rows": args.rows, "repeat": args.repeat},
            "rc": rc, "cprofile": args.cprofile, "utterances": utterances,
            "whole_run": {"wall_s": round(t1 - t0, 2), "driver_cpu_s": round(proc1 - proc0 - whole.pop("profile-sampler", 0.0), 2),
                          "plan_s": round(window["t0"] - t0, 2), "plan_driver_cpu_s": round(window["proc0"] - proc0, 2),
                          "threads": whole},
            "drain": {"wall_s": round(wall, 2), "driver_cpu_s": round(cpu, 3), "blocks": window["blocks"],
                      "manifest_rows": window["manifest_rows"],
                      "cpu_s_per_s": round(cpu / wall, 4),
                      "cpu_s_per_1000_utterances": round(1000 * cpu / max(utterances, 1), 3),
                      "threads": steady,
                      "threads_cpu_s_per_s": {k: round(v / wall, 4) for k, v in steady.items()}},
        }
        if profiles:
            result["profiles"] = profiles.report(args.top)
        text = json.dumps(result, indent=1)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        summary = {k: result[k] for k in ("job", "utterances", "whole_run", "drain")}
        print(json.dumps(summary, indent=1), flush=True)
        if profiles:
            buf = io.StringIO()
            for name, p in result["profiles"].items():
                buf.write(f"\n== {name}: own time {p['own_time_s']} s\n")
                for r in p["top_own"][:args.top]:
                    buf.write(f"  {r['own_s']:8.4f} own {r['cum_s']:8.4f} cum {r['calls']:8d}  {r['fn']}\n")
                for fn, w in list(p["watched"].items())[:20]:
                    buf.write(f"  [watch] {fn}: {w}\n")
            print(buf.getvalue(), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
