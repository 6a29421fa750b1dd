"""What every benchmark records: machine, versions, git sha, the command, and figures over repeats.

Timings are never asserted in tests; benchmarks write JSON to bench/results/<name>.json and the README quotes
them with the command that made them. Comparisons are ratios measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# Offline and quiet, before torch or Ray load (every bench imports this module first); a caller's setting wins.
# OMP_WAIT_POLICY=PASSIVE: libgomp's default spin-wait made 2-thread small-batch inference 10-60x slower on
# shared cores (batch-1 forward 2-4 s instead of 35-60 ms); the Ray workers inherit it. ACTIVE overrides it.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("PYANNOTE_METRICS_ENABLED", "0"),
                     ("OMP_WAIT_POLICY", "PASSIVE"), ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
                     ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"
# Measured matmul peak with torch on this machine's 2 threads (../shared/STACK.md): the MFU denominator.
PEAK_FLOPS = {"fp32": 167e9, "bf16": 406e9}

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


RAVDESS_DEV_ACTORS = {f"{i:02d}" for i in range(13, 17)}  # unseen speakers; 01-12 train (bench_ravdess.py)


def ravdess_dev_rows(n: int | None = None) -> list[dict]:
    """The first ``n`` RAVDESS manifest rows of the dev actors, in manifest order."""
    import csv

    with open(SHARED_DATA / "ravdess" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["actor"] in RAVDESS_DEV_ACTORS]
    return rows[:n]


def write_manifest(path: str, rows: list[dict]) -> str:
    """A preprocess manifest (file, text, label) of RAVDESS rows; a row's ``file`` may be renamed by the caller."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "text", "label"])
        w.writeheader()
        for r in rows:
            w.writerow({"file": r["file"], "text": r["text"], "label": r["valence"]})
    return path


def machine_info() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for pkg in ("ray", "transformers", "pyarrow", "polars", "opensmile", "faster_whisper", "pocketsphinx"):
        try:
            info[pkg] = __import__(pkg).__version__
        except Exception:  # optional: a benchmark may not need every package
            pass
    return info


def seed_training(seed: dict) -> dict:
    """How one seed's training went, as the train job's summary.json records it (an entry of its "seeds", from
    cmbert.training.publish_seed): the best epoch, the epochs run, whether early stopping ended it, and the
    per-epoch dev history. Read from that record, never re-derived; a summary from before early stopping has only
    the best epoch (the rest None)."""
    return {k: seed.get(k) for k in ("best_epoch", "epochs_run", "stopped_early", "history")}


def merge_seeds(new: list[dict], old: list[dict], old_doc: dict) -> list[dict]:
    """The per-seed entries of this run (``new``) plus those of an earlier results file (``old``, from its
    document ``old_doc``) whose seed did not run now, each of those marked ``from_results_file`` (that file's git,
    time and command); in the job's seed order (1, 11, 111, ...). What --merge does in bench_mosi.py and
    bench_ravdess.py: seeds run in separate invocations (jobs/train.py --seed-values) add up to one study."""
    have = {r["seed"] for r in new}
    kept = [dict(r) | {"from_results_file": r.get("from_results_file") or {
                "git": old_doc.get("git"), "time": old_doc.get("time"), "command": old_doc.get("command")}}
            for r in old if r["seed"] not in have]
    return sorted(list(new) + kept, key=lambda r: (len(str(r["seed"])), r["seed"]))


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


@contextmanager
def timer(out: list):
    t0 = time.perf_counter()
    yield
    out.append(time.perf_counter() - t0)


def write_result(name: str, figures: dict, notes: str = "") -> Path:
    from cmbert.runinfo import code_version

    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "git": code_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "figures": figures,
        "notes": notes,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    print(f"[bench] wrote {path}")
    return path


def run_sampled(cmd: list[str], cwd, env: dict, log: str, sampler_for) -> tuple[object, float]:
    """Run ``cmd`` (output to ``log``) while ``sampler_for(pid)`` (a thread with a ``stop`` event) watches its
    process tree; -> (the sampler, wall seconds). A failed command raises with the log's tail."""
    import subprocess

    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = sampler_for(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop.set()
        sampler.join()
        wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; see {log}:\n" + open(log).read()[-3000:])
    return sampler, wall
