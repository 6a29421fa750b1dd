"""Scoring throughput (utterances/s) and model FLOPs utilisation: batched vs one-at-a-time vs the Ray Data job.

    python bench/bench_score.py [--rows 600] [--naive-rows 300] [--ray-rows 3000] [--repeats 3] [--batch-size 32]
                                [--threads 2] [--bf16-rows N] [--skip-ray] [--skip-bf16] [--encoder mpnet|minilm]

Synthetic utterances (5-40 words, uniform; random 25-d word features, feature set egemaps_v02_lld) are built
through ``cmbert.manifest.Utterance`` and cast to ``schemas.UTTERANCES_SCHEMA``. The model is the default
CM-BERT (``CMBertConfig(encoder=--encoder)``: the default encoder, all-mpnet-base-v2, unless ``--encoder minilm``;
paper fusion, max_len 50), saved with
``save_checkpoint`` to a temporary folder and loaded back with ``load_checkpoint``, as the job does.

(a) batched: ``cmbert.scoring.score_rows`` (token lengths -> length buckets -> collate -> forward), the pure
    function inside ``ScoreStage``; one process, ``--threads`` torch threads.
(b) naive: the same Scorer, one utterance per forward pass (over the first ``--naive-rows``), same threads. (a) and (b) alternate repeat by
    repeat so they share the machine's load; the speed-up is reported per repeat pair as well.
    fp32, then bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``) as a second row when the CPU has native
    bf16 (without it torch emulates bf16, ~100x slower than fp32: skipped unless ``--bf16-rows`` asks for a prefix).
OMP_WAIT_POLICY defaults to PASSIVE (bench/common.py; recorded in the JSON).
(d) per-core processes: the job's layout without Ray: ``--threads`` processes of one torch thread each (spawned,
    checkpoint loaded and warmed up before the clock starts), each scoring every n-th row with (a)'s function.
    On 2 cores this beats one 2-thread process (no OpenMP synchronisation inside small matmuls).
(c) ray: ``jobs/score.py`` main() on ``--ray-rows`` other utterances written as local Parquet, job defaults (one
    actor per core, 1 thread and 0.5 CPU each, batch 32, sort window 16), a fresh output folder each repeat;
    before each repeat, (a) in this process over the same rows (the baseline). Ray is started
    (address="local", 2 CPUs) before the first repeat and timed apart; each main() still starts its actor pool
    and loads the checkpoint in every actor. Time to first row is the job's own ``Tally.first_row_s`` (from
    run() start to the first scored block reaching the driver). Ray overhead = median (c) main() seconds /
    median baseline seconds - 1. Each repeat also runs (c) on the first ``--ray-small-rows`` rows; the two sizes
    split the job's time into a fixed start-up and a per-row (steady-state) cost, compared with (a)'s per row.

FLOPs: ``cmbert.model.estimate_flops`` (forward, analytic, per utterance of t real word-pieces; padding is not
counted as useful work), summed over the utterances; within 0.3% of the parameter-count formula
2 * P * t + L * 4 * t^2 * H + 4 * t^2 * D + 2 * t^2 * H used here before (biases and norms). MFU = FLOPs/s / peak; peaks: ../shared/STACK.md (fp32 167, bf16 406 GFLOP/s on 2 threads,
an AVX-512-bf16 machine) and this machine's own matmul peak, measured here at the start of the run.
Writes bench/results/score.json for the default encoder (what bench_scale.py reads), score-ENCODER.json otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PEAK_FLOPS, REPO, summary, write_result  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))

AUDIO_DIM = 25
FEATURE_SET = "egemaps_v02_lld"
# Everyday review words plus some that WordPiece splits, so word-pieces per word is realistic (~1.1-1.3).
VOCAB = ("the movie was really not very good bad great awful acting plot funny boring i liked it hated loved "
         "story characters ending music director so kind of and but just a little too long honestly think "
         "you know um like this that would recommend watching again cinematography screenplay unconvincing "
         "overacted heartwarming predictable underwhelming masterpiece soundtrack protagonist storyline "
         "disappointing entertaining surprisingly forgettable").split()


# ---------------------------------------------------------------- inputs and model


def synthetic_table(n: int, seed: int = 0):
    """``n`` utterances of 5-40 words with 25-d generated word features, as a UTTERANCES_SCHEMA table."""
    import pyarrow as pa

    from cmbert.testing import utterance_rows
    from schemas import UTTERANCES_SCHEMA

    rows = utterance_rows(n, seed=seed, words=(5, 40), vocab=VOCAB, audio_dim=AUDIO_DIM, feature_set=FEATURE_SET,
                          labelled=False, run_id="bench")
    return pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA)


def make_checkpoint(uri: str, encoder: str | None = None) -> dict:
    """A checkpoint of an untrained CM-BERT on ``encoder`` (default: the default encoder)."""
    from cmbert import testing
    from cmbert.model import CMBertConfig

    return testing.make_checkpoint(uri, FEATURE_SET, AUDIO_DIM, encoder=encoder or CMBertConfig().encoder,
                                   model_id="cmbert-bench")


# ---------------------------------------------------------------- FLOPs


def forward_flops(config, lengths) -> float:
    """Forward FLOPs of utterances of these word-piece counts (cmbert.model.estimate_flops)."""
    from cmbert.model import estimate_flops

    return sum(estimate_flops(config, t)["forward"] for t in lengths)


def load_scorer(ckpt: str, batch_size: int):
    """(LoadedModel, Scorer) for ``ckpt`` as ScoreStage builds them, on the CPU."""
    from cmbert.checkpoint import load_checkpoint
    from cmbert.collate import collate, token_lengths
    from cmbert.scoring import Scorer

    lm = load_checkpoint(ckpt)
    return lm, Scorer(lm.model, lm.tokenizer, lm.config.max_len, lm.config.audio_dim, collate, "cpu", batch_size,
                      token_lengths)


def measured_matmul_peak(dtype: str, threads: int, seconds: float = 1.5) -> float:
    """This machine's square-matmul FLOP/s at ``threads`` (best single 768^3 product within ``seconds``)."""
    import torch

    torch.set_num_threads(threads)
    n = 768
    a = torch.randn(n, n, dtype=getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]))
    b = torch.randn_like(a)
    a @ b  # warm up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0))
    return best


def native_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX); without them torch emulates bf16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---------------------------------------------------------------- (a) and (b)


def timed_batched(scorer, rows) -> tuple[float, object]:
    from cmbert.scoring import score_rows

    t0 = time.perf_counter()
    scores, errors = score_rows(rows, scorer)
    elapsed = time.perf_counter() - t0
    assert not any(errors), next(e for e in errors if e)
    return elapsed, scores


def timed_naive(scorer, rows) -> tuple[float, object]:
    import numpy as np

    t0 = time.perf_counter()
    scores = np.array([scorer.forward([r])[0] for r in rows], dtype=np.float32)
    return time.perf_counter() - t0, scores


def in_process(ckpt: str, table, args, peaks: dict) -> dict:
    """(a) batched vs (b) naive, fp32 and bf16 autocast, alternating repeats."""
    import contextlib

    import numpy as np
    import torch

    from cmbert.collate import token_lengths
    from cmbert.scoring import INPUT_COLUMNS

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm, scorer = load_scorer(ckpt, args.batch_size)
    load_s = time.perf_counter() - t0
    rows = table.select(INPUT_COLUMNS).to_pylist()  # what ScoreStage hands score_rows
    naive_rows = rows[:args.naive_rows]
    lengths = token_lengths(rows, lm.tokenizer, lm.config.max_len)
    from cmbert.collate import length_buckets

    padded = sum(len(b) * max(lengths[i] for i in b) for b in length_buckets(lengths, args.batch_size))
    out = {"checkpoint_load_s": load_s, "flop_formula": "cmbert.model.estimate_flops", "rows": len(rows), "naive_rows": len(naive_rows),
           "tokens_per_utterance": {"mean": statistics.mean(lengths), "min": min(lengths), "max": max(lengths)},
           "words_per_utterance_mean": statistics.mean(len(r["words"]) for r in rows),
           "gflop_per_utterance": forward_flops(lm.config, lengths) / len(rows) / 1e9,
           "padded_token_fraction_batched": 1 - sum(lengths) / padded}
    reference = None
    all_rows, all_naive = rows, naive_rows
    for dtype in ("fp32",) + (() if args.skip_bf16 else ("bf16",)):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
        rows, naive_rows = all_rows, all_naive
        if dtype == "bf16" and args.bf16_rows:  # emulated bf16 is ~100x slower: a prefix keeps the bench short
            rows, naive_rows = all_rows[:args.bf16_rows], all_naive[:args.bf16_rows]
        flops_all = forward_flops(lm.config, lengths[:len(rows)])
        flops_naive = forward_flops(lm.config, lengths[:len(naive_rows)])
        with ctx():
            scorer.forward(rows[:args.batch_size])  # warm up both shapes
            scorer.forward(rows[:1])
            a_s, b_s, pair = [], [], []
            for _ in range(args.repeats):
                ta, scores = timed_batched(scorer, rows)
                tb, naive_scores = timed_naive(scorer, naive_rows)
                a_s.append(ta)
                b_s.append(tb)
                pair.append((len(rows) / ta) / (len(naive_rows) / tb))
                print(f"[bench] {dtype} repeat {len(a_s)}: batched {len(rows) / ta:.1f} utt/s, naive "
                      f"{len(naive_rows) / tb:.1f} utt/s", flush=True)
        if reference is None:
            reference = scores
        a_ups = [len(rows) / t for t in a_s]
        b_ups = [len(naive_rows) / t for t in b_s]
        peak_local = peaks.get(f"local_{dtype}")
        out[dtype] = {
            "rows": len(rows), "naive_rows": len(naive_rows),
            "batched": {"utterances_per_s": summary(a_ups), "seconds": summary(a_s),
                        "mfu_vs_stack_peak": summary([flops_all / t / PEAK_FLOPS[dtype] for t in a_s]),
                        "mfu_vs_local_peak": summary([flops_all / t / peak_local for t in a_s]) if peak_local else None},
            "naive": {"utterances_per_s": summary(b_ups), "seconds": summary(b_s),
                      "mfu_vs_stack_peak": summary([flops_naive / t / PEAK_FLOPS[dtype] for t in b_s]),
                      "mfu_vs_local_peak": summary([flops_naive / t / peak_local for t in b_s]) if peak_local else None},
            "batched_over_naive": summary(pair),
            "batched_over_naive_of_medians": statistics.median(a_ups) / statistics.median(b_ups),
            "max_abs_diff_batched_vs_naive": float(np.max(np.abs(scores[:len(naive_rows)] - naive_scores))),
            "max_abs_diff_vs_fp32": float(np.max(np.abs(scores - reference[:len(scores)]))),
        }
        print(f"[bench] {dtype}: batched {statistics.median(a_ups):.1f} utt/s, naive {statistics.median(b_ups):.1f} "
              f"utt/s, ratio {statistics.median(pair):.2f}x", flush=True)
    out["_lengths"], out["_config"] = lengths, lm.config  # for (d)'s FLOPs; popped by main()
    del lm, scorer
    return out


# ---------------------------------------------------------------- (d) one single-thread process per core


def _core_worker(ckpt: str, rows: list, batch_size: int, ready, go, out) -> None:
    """One process, one torch thread: load the checkpoint, warm up, wait for the start signal, score ``rows``."""
    import torch

    torch.set_num_threads(1)
    _, scorer = load_scorer(ckpt, batch_size)
    scorer.forward(rows[:batch_size])
    ready.set()
    go.wait()
    out.put(timed_batched(scorer, rows)[0])


def per_core_processes(ckpt: str, table, args) -> dict:
    """(d) The job's layout without Ray: one single-thread process per core, each scoring every n-th row."""
    import multiprocessing as mp

    from cmbert.scoring import INPUT_COLUMNS

    rows = table.select(INPUT_COLUMNS).to_pylist()
    n = args.threads
    ctx = mp.get_context("spawn")
    walls = []
    for _ in range(args.repeats):
        go, out = ctx.Event(), ctx.Queue()
        readies = [ctx.Event() for _ in range(n)]
        procs = [ctx.Process(target=_core_worker, args=(ckpt, rows[i::n], args.batch_size, readies[i], go, out))
                 for i in range(n)]
        for p in procs:
            p.start()
        for r in readies:
            r.wait()
        t0 = time.perf_counter()
        go.set()
        parts = [out.get() for _ in procs]
        walls.append(time.perf_counter() - t0)
        for p in procs:
            p.join()
        print(f"[bench] {n} single-thread processes: {len(rows) / walls[-1]:.1f} utt/s (slowest part "
              f"{max(parts):.1f} s)", flush=True)
    return {"processes": n, "rows": len(rows), "seconds": summary(walls), "walls": walls,
            "utterances_per_s": summary([len(rows) / w for w in walls])}


# ---------------------------------------------------------------- (c) Ray Data job


def ray_job(ckpt: str, table, args, work: str) -> dict:
    """(c) jobs/score.py main() over ``table``, each repeat after (a) over the same rows in this process."""
    import ray
    import torch

    import score
    from cmbert import storage
    from cmbert.raysetup import data_context, start_local_ray
    from cmbert.scoring import INPUT_COLUMNS
    from schemas import UTTERANCES_SCHEMA

    torch.set_num_threads(args.threads)
    _, scorer = load_scorer(ckpt, args.batch_size)
    rows = table.select(INPUT_COLUMNS).to_pylist()
    scorer.forward(rows[:args.batch_size])  # warm up

    data, small = f"{work}/utterances", f"{work}/utterances-small"
    storage.write_table(table, data, UTTERANCES_SCHEMA)
    n_small = min(args.ray_small_rows, table.num_rows // 2)
    storage.write_table(table.slice(0, n_small), small, UTTERANCES_SCHEMA)
    os.environ.pop("RAY_ADDRESS", None)  # a fresh local instance, never someone else's cluster
    t0 = time.perf_counter()
    start_local_ray(include_dashboard=False, num_cpus=2, object_store_memory=512 * 1024 ** 2, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    data_context()
    tallies = []
    real_run = score.run

    def run_and_keep(cfg):
        tallies.append(real_run(cfg))
        return tallies[-1]

    score.run = run_and_keep
    def job(src: str, out: str, n: int) -> float:
        argv = ["--checkpoint", ckpt, "--input", src, "--output", out, "--batch-size", str(args.batch_size),
                "--score-date", "2024-01-02"]
        t0 = time.perf_counter()
        rc = score.main(argv)
        seconds = time.perf_counter() - t0
        if rc != 0 or tallies[-1].output_rows != n:
            raise RuntimeError(f"score.main returned {rc}, scored {tallies[-1].output_rows}/{n}")
        return seconds

    totals, smalls, baseline = [], [], []
    try:
        for k in range(args.repeats):
            baseline.append(timed_batched(scorer, rows)[0])
            totals.append(job(data, f"{work}/out-{k}", table.num_rows))
            first = tallies[-1].first_row_s
            smalls.append(job(small, f"{work}/out-small-{k}", n_small))
            print(f"[bench] ray repeat {k + 1}: {totals[-1]:.1f} s, first row {first}; {n_small} rows: "
                  f"{smalls[-1]:.1f} s", flush=True)
    finally:
        score.run = real_run
        ray.shutdown()
    first = [t.first_row_s for t in tallies[::2] if t.first_row_s is not None]
    # Two sizes separate Ray's fixed start-up from its per-row cost: T(n) = fixed + n x marginal.
    marginal = (statistics.median(totals) - statistics.median(smalls)) / (table.num_rows - n_small)
    per_row_plain = statistics.median(baseline) / table.num_rows
    return {"rows": table.num_rows, "ray_init_s": ray_init_s, "main_seconds": summary(totals),
            "small_rows": n_small, "small_main_seconds": summary(smalls),
            "fixed_startup_s": statistics.median(smalls) - n_small * marginal,
            "steady_utterances_per_s": 1.0 / marginal if marginal > 0 else None,
            "steady_overhead_vs_batched": marginal / per_row_plain - 1,
            "batched_same_rows_seconds": summary(baseline),
            "overhead_vs_batched": statistics.median(totals) / statistics.median(baseline) - 1,
            "utterances_per_s": summary([table.num_rows / t for t in totals]),
            "time_to_first_row_s": summary(first) if first else None,
            "config": "job defaults: one actor per core (1 torch thread, 0.5 CPU each), batch 32, sort window 16"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from cmbert.encoders import DEFAULT_ENCODER

    ap.add_argument("--encoder", default=DEFAULT_ENCODER, help="mpnet (default), minilm or a model directory")
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--naive-rows", type=int, default=300, help="rows for the one-at-a-time loop (a prefix)")
    ap.add_argument("--ray-rows", type=int, default=3000, help="rows for (c) and its in-process baseline")
    ap.add_argument("--ray-small-rows", type=int, default=300, help="(c) again on this prefix: fixed vs per-row cost")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--bf16-rows", type=int, default=None,
                    help="rows for the bf16 row (default: all with native bf16; without it bf16 is skipped unless set)")
    args = ap.parse_args()
    args.naive_rows = min(args.naive_rows, args.rows)
    if not native_bf16() and not args.bf16_rows:  # emulated bf16 (~100x slower than fp32) measures the emulation
        print("[bench] bf16 skipped: this CPU has no native bf16 (pass --bf16-rows N to time the emulation)")
        args.skip_bf16 = True

    import torch

    peaks = {"stack_fp32": PEAK_FLOPS["fp32"], "stack_bf16": PEAK_FLOPS["bf16"],
             "local_fp32": measured_matmul_peak("fp32", args.threads)}
    if not args.skip_bf16 and native_bf16():  # emulated bf16 matmul says nothing about the model's bf16 kernels
        peaks["local_bf16"] = measured_matmul_peak("bf16", args.threads)
    print("[bench] matmul peak here: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()
                                                  if k.startswith("local")), flush=True)
    work = tempfile.mkdtemp(prefix="cmbert-bench-score-")
    try:
        ckpt = f"{work}/checkpoint"
        make_checkpoint(ckpt, args.encoder)
        table = synthetic_table(args.rows)
        figures = {"peak_flops": peaks, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "native_bf16": native_bf16(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                   "threads": args.threads, "batch_size": args.batch_size}
        figures |= in_process(ckpt, table, args, peaks)
        d = per_core_processes(ckpt, table, args)
        flops_all = forward_flops(figures.pop("_config"), figures.pop("_lengths"))
        d["mfu_vs_stack_peak"] = summary([flops_all / t / PEAK_FLOPS["fp32"] for t in d.pop("walls")])
        d["over_naive"] = d["utterances_per_s"]["median"] / figures["fp32"]["naive"]["utterances_per_s"]["median"]
        figures["fp32_per_core_processes"] = d
        if not args.skip_ray:
            figures["ray"] = ray_job(ckpt, synthetic_table(args.ray_rows, seed=1), args, work)
            print(f"[bench] ray: {figures['ray']['utterances_per_s']['median']:.1f} utt/s, overhead "
                  f"{100 * figures['ray']['overhead_vs_batched']:.0f}%, first row "
                  f"{(figures['ray']['time_to_first_row_s'] or {}).get('median')} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = "score" if args.encoder == DEFAULT_ENCODER else f"score-{os.path.basename(args.encoder.rstrip('/'))}"
    write_result(name, figures | {"config": vars(args), "encoder": args.encoder}, notes=(
        "FLOPs per utterance (forward, t real word-pieces): 2*P*t + L*4*t^2*H + 4*t^2*D + 2*t^2*H, P = non-embedding "
        "parameters (encoder layers + fusion + head), L layers, H hidden, D proj_dim; padding not counted. "
        "MFU = FLOPs/s / peak (STACK.md peak and this machine's measured matmul peak). (a) batched = "
        "cmbert.scoring.score_rows incl. tokenization and collate, (b) naive = one utterance per forward, same "
        "threads, alternating with (a); (c) = jobs/score.py main() incl. planning, actor start, checkpoint "
        "load per actor, Parquet read/write; Ray start-up timed apart (ray_init_s). Ray overhead = "
        "median (c) / median (a over the same ray_rows) - 1. CPU shared with other users when measured: compare ratios from one run."))


if __name__ == "__main__":
    main()
