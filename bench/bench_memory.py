"""Peak memory of the preprocess and score jobs on a corpus and on the same corpus repeated 4x (streaming: flat).

    python bench/bench_memory.py [--clips 40] [--rows 2000] [--repeat 4] [--interval 0.2]

Each job runs as its own process (``python jobs/<job>.py ...``, job defaults, local Ray started by the job),
and a sampler reads the memory of that process and all its descendants (the Ray GCS, raylet and workers)
every ``--interval`` seconds from /proc: the peak of the summed PSS (proportional set size: shared pages,
such as Ray's object store and the model weights mapped by several workers, are split among the processes
that map them, so the sum is the tree's real footprint), and the peak RSS of the largest single process.
Linux only (reads /proc/PID/smaps_rollup).

- preprocess: the first ``--clips`` RAVDESS dev clips (actors 13-16, alignment path, eGeMAPS), written as WAV;
  the 4x corpus holds each clip ``--repeat`` times, each copy one sample different so its content hash (the
  clip id) differs and the job does the work again.
- score: ``--rows`` synthetic utterances (bench_score.py's generator) in files of 500 rows, scored by a fresh
  checkpoint; the 4x corpus is the same rows ``--repeat`` times with new utterance ids.
Target: the 4x peak within 20% of the 1x peak. Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, SHARED_DATA, ravdess_dev_rows, run_sampled, write_manifest, write_result  # noqa: E402

MIB = 1024 * 1024


# ---------------------------------------------------------------- /proc sampling


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # fields after "(comm)": state, ppid, ...
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in bytes of one process; (0, 0) when it has gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


class TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss_one = self.max_procs = self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            mem = [_rollup(p) for p in pids]
            self.peak_pss = max(self.peak_pss, sum(p for p, _ in mem))
            self.peak_rss_one = max([self.peak_rss_one] + [r for _, r in mem])
            self.max_procs = max(self.max_procs, sum(1 for p, _ in mem if p))
            self.samples += 1
            self.stop.wait(self.interval)


def measure(cmd: list[str], interval: float, log: str) -> dict:
    sampler, wall = run_sampled(cmd, REPO, dict(os.environ, PYTHONPATH=str(REPO)), log,
                                lambda pid: TreeSampler(pid, interval))
    return {"peak_pss_mib": round(sampler.peak_pss / MIB, 1), "peak_rss_largest_process_mib":
            round(sampler.peak_rss_one / MIB, 1), "max_processes": sampler.max_procs, "samples": sampler.samples,
            "wall_s": round(wall, 1)}


# ---------------------------------------------------------------- corpora


def preprocess_corpus(folder: str, clips: int, repeat: int) -> str:
    """WAV copies of the first ``clips`` dev clips, each ``repeat`` times; returns the manifest path."""
    import numpy as np
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    copies = []
    for r in ravdess_dev_rows(clips):
        audio, sr = sf.read(SHARED_DATA / "ravdess" / r["file"], dtype="int16")
        for k in range(repeat):
            copy = np.array(audio, copy=True)
            copy[0] = np.int16(k)  # one sample differs: a new content hash, the same audio
            name = f"{os.path.splitext(os.path.basename(r['file']))[0]}-copy{k}.wav"
            sf.write(os.path.join(folder, name), copy, sr, subtype="PCM_16")
            copies.append({**r, "file": name})
    return write_manifest(os.path.join(folder, "manifest.csv"), copies)


SCORE_ROWS_PER_FILE = 500  # score: one task per input file (incremental.by_file)


def score_corpus(folder: str, rows: int, repeat: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from bench_score import synthetic_table

    table = synthetic_table(rows)
    os.makedirs(folder, exist_ok=True)
    per_file = SCORE_ROWS_PER_FILE
    for k in range(repeat):
        copy = table.set_column(table.column_names.index("utterance_id"), "utterance_id",
                                pc.binary_join_element_wise(table.column("utterance_id"), pa.scalar(f"r{k}"), "-"))
        for i in range(0, rows, per_file):
            pq.write_table(copy.slice(i, per_file), os.path.join(folder, f"part-{k:02d}-{i // per_file:04d}.parquet"))


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--skip-preprocess", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    figures: dict = {"repeat": args.repeat, "target_ratio": 1.2}
    work = tempfile.mkdtemp(prefix="cmbert-bench-memory-")
    try:
        if not args.skip_preprocess and (SHARED_DATA / "ravdess" / "manifest.csv").exists():
            fig = {"clips": args.clips}
            for label, repeat in (("corpus_1x", 1), (f"corpus_{args.repeat}x", args.repeat)):
                manifest = preprocess_corpus(f"{work}/clips-{repeat}", args.clips, repeat)
                cmd = [py, "jobs/preprocess.py", "--input", f"{work}/clips-{repeat}", "--manifest", manifest,
                       "--output", f"{work}/pre-{repeat}", "--features", "egemaps"]  # as measured; not the default
                fig[label] = measure(cmd, args.interval, f"{work}/pre-{repeat}.log") | {"clips": args.clips * repeat}
                print(f"[bench] preprocess {label}: {fig[label]}", flush=True)
            fig["ratio_4x_over_1x"] = round(fig[f"corpus_{args.repeat}x"]["peak_pss_mib"] / fig["corpus_1x"]["peak_pss_mib"], 3)
            figures["preprocess"] = fig
        if not args.skip_score:
            from bench_score import make_checkpoint

            make_checkpoint(f"{work}/checkpoint")
            fig = {"rows": args.rows}
            for label, repeat in (("corpus_1x", 1), (f"corpus_{args.repeat}x", args.repeat)):
                score_corpus(f"{work}/utt-{repeat}", args.rows, repeat)
                cmd = [py, "jobs/score.py", "--checkpoint", f"{work}/checkpoint", "--input", f"{work}/utt-{repeat}",
                       "--output", f"{work}/scores-{repeat}", "--score-date", "2024-01-02"]
                fig[label] = measure(cmd, args.interval, f"{work}/score-{repeat}.log") | {"rows": args.rows * repeat}
                print(f"[bench] score {label}: {fig[label]}", flush=True)
            fig["ratio_4x_over_1x"] = round(fig[f"corpus_{args.repeat}x"]["peak_pss_mib"] / fig["corpus_1x"]["peak_pss_mib"], 3)
            figures["score"] = fig
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("memory", figures | {"config": vars(args)}, notes=(
        "peak_pss_mib = peak over samples of the summed PSS of the job's process tree (driver, Ray GCS, raylet, "
        "workers), read from /proc/PID/smaps_rollup every interval seconds; short spikes between samples can be "
        "missed. Each job starts its own local Ray (job defaults). ratio = 4x peak / 1x peak (target <= 1.2)."))


if __name__ == "__main__":
    main()
