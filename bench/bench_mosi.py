"""CMU-MOSI text (no audio here): T-BERT vs CM-BERT (audio absent), several seeds, MMSA metrics on dev.

    python bench/bench_mosi.py [--work runs/bench-mosi] [--seeds 5] [--budget-min 30] [--epochs 3] [--workers 1]

../shared/data/mosi-text/train.tsv (1284 rows) and dev.tsv (the CM-BERT paper's split) become text-only
utterance datasets with the real preprocess job (jobs/preprocess.py main(), --manifest FILE --output DIR; audio
marked absent). Each (model, seed) is then one in-process call of jobs/train.py main() (Ray Train,
--workers 1, default encoder MiniLM-L6, 3 epochs, paper defaults otherwise) and one of jobs/evaluate.py main()
on dev. Seeds are the job's own (1, 11, 111, ...), given to the job one at a time so that the time of the first
(T-BERT, CM-BERT) pair is measured before the next pair starts: a pair starts only when the projected total stays
within --budget-min (so N <= --seeds is chosen from the measured time). Reports mean ± std (ddof=1) over seeds.
Writes bench/results/mosi.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import REPO, SHARED_DATA, write_result  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))

HEADLINE = ("has0_acc2", "non0_acc2", "has0_f1", "non0_f1", "mae", "corr", "acc7", "acc5")
PAPER_TBERT_TEST = {"acc2": 83.2, "f1": 83.2, "mae": 0.784, "corr": 0.774, "acc7": 41.5}


def preprocess(split: str, work: str, reuse: bool = False) -> tuple[str, float]:
    import preprocess as preprocess_job

    out = os.path.join(work, "data", split)
    if reuse and os.path.isdir(os.path.join(out, "utterances")):
        return os.path.join(out, "utterances"), 0.0
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rc = preprocess_job.main(["--manifest", str(SHARED_DATA / "mosi-text" / f"{split}.tsv"), "--output", out])
    if rc != 0:
        raise SystemExit(f"preprocess {split} failed with {rc}")
    return os.path.join(out, "utterances"), time.perf_counter() - t0


def run_one(name: str, seed: int, extra: list[str], train_uri: str, dev_uri: str, args) -> dict:
    import evaluate as evaluate_job
    import train as train_job

    model_dir = os.path.join(args.work, "models", name, f"seed-{seed}")
    eval_json = os.path.join(args.work, "eval", name, f"seed-{seed}.json")
    argv = ["--train", train_uri, "--dev", dev_uri, "--output", model_dir, "--seeds", "1",
            "--epochs", str(args.epochs), "--workers", str(args.workers)] + extra
    if args.reuse and os.path.exists(eval_json) and os.path.exists(os.path.join(model_dir, "summary.json")):
        return reused(seed, argv, model_dir, eval_json)
    shutil.rmtree(model_dir, ignore_errors=True)
    # train.py trains seeds 1, 11, 111, ... (its seed_list); ask it for exactly this one seed.
    original = train_job.seed_list
    train_job.seed_list = lambda n: [seed]
    try:
        print(f"[mosi] {name} seed {seed}: train {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        summary = train_job.main(argv)
        train_s = time.perf_counter() - t0
    finally:
        train_job.seed_list = original
    t0 = time.perf_counter()
    result = evaluate_job.main(["--checkpoint", model_dir, "--data", dev_uri, "--output", eval_json])
    eval_s = time.perf_counter() - t0
    with open(eval_json) as f:
        metrics = json.load(f)["per_seed"][0]["metrics"]
    return {"seed": seed, "train_argv": argv, "train_s": train_s, "eval_s": eval_s, "metrics": metrics,
            "best_epoch": summary["seeds"][0]["best_epoch"], "n_dev": result["n_rows"],
            "train_rows_per_s": summary["seeds"][0]["train_rows_per_s"]}


def reused(seed: int, argv: list[str], model_dir: str, eval_json: str) -> dict:
    """A finished (model, seed) run from an earlier invocation: its metrics, and its train time from the
    train job's own run row (RUNS_SCHEMA duration_s)."""
    from cmbert import storage

    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(eval_json) as f:
        result = json.load(f)
    row = storage.read_table(os.path.join(model_dir, "runs")).to_pylist()[-1]
    if json.loads(row["config_json"]).get("train") != argv[1]:
        raise SystemExit(f"{model_dir} was trained on other data; run without --reuse")
    print(f"[mosi] reusing {model_dir}", flush=True)
    return {"seed": seed, "train_argv": argv, "train_s": row["duration_s"], "eval_s": None, "reused": True,
            "metrics": result["per_seed"][0]["metrics"], "best_epoch": summary["seeds"][0]["best_epoch"],
            "n_dev": result["n_rows"], "train_rows_per_s": summary["seeds"][0]["train_rows_per_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "bench-mosi"))
    p.add_argument("--seeds", type=int, default=5, help="at most this many seeds (paper: 5)")
    p.add_argument("--budget-min", type=float, default=30.0, help="start another seed pair only within this")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="keep finished (model, seed) runs of an earlier "
                   "invocation in --work; the budget then counts only this invocation's new runs")
    args = p.parse_args()
    t_all = time.perf_counter()

    from cmbert.metrics import aggregate
    from train import seed_list

    train_uri, pre_train_s = preprocess("train", args.work, args.reuse)
    dev_uri, pre_dev_s = preprocess("dev", args.work, args.reuse)
    models = {"tbert": ("T-BERT (--fusion none)", ["--fusion", "none"]),
              # The job's defaults; with audio absent they compute the paper's CM-BERT at fusion lr 1e-3.
              "cmbert": ("CM-BERT, audio absent (job defaults)", ["--fusion", "cmbert"])}
    runs: dict[str, list[dict]] = {k: [] for k in models}
    budget = args.budget_min * 60
    pair_times = []
    for seed in seed_list(args.seeds):
        elapsed = time.perf_counter() - t_all
        if pair_times and elapsed + max(pair_times) > budget:
            print(f"[mosi] stopping after {len(pair_times)} seed(s): {elapsed:.0f}s elapsed, a pair takes "
                  f"{max(pair_times):.0f}s, budget {budget:.0f}s", flush=True)
            break
        pair = 0.0
        for name, (_, extra) in models.items():
            r = run_one(name, seed, extra, train_uri, dev_uri, args)
            runs[name].append(r)
            pair += r["train_s"] + (r["eval_s"] or 0.0)
            print(f"[mosi] {name} seed {seed}: {json.dumps(r['metrics'])} train {r['train_s']:.0f}s", flush=True)
        pair_times.append(pair)

    figures = {"data": {"train": train_uri, "dev": dev_uri, "preprocess_s": {"train": pre_train_s, "dev": pre_dev_s}},
               "seeds_run": len(pair_times), "seeds_max": args.seeds, "epochs": args.epochs, "models": {},
               "paper_reference_tbert_bert_base_test": PAPER_TBERT_TEST}
    for name, (title, extra) in models.items():
        agg = aggregate([r["metrics"] for r in runs[name]])
        figures["models"][name] = {
            "title": title, "seeds": [r["seed"] for r in runs[name]], "mean_std": agg,
            "headline": {k: (f"{agg[k]['mean']:.4f} ± {agg[k]['std']:.4f}" if agg[k]["n"] > 1
                             else f"{agg[k]['mean']:.4f} (1 seed, no std)") for k in HEADLINE if k in agg},
            "per_seed": runs[name],
            "train_s": {"mean": sum(r["train_s"] for r in runs[name]) / max(len(runs[name]), 1),
                        "all": [r["train_s"] for r in runs[name]]}}
        print(f"[mosi] {name}: " + "  ".join(f"{k} {v}" for k, v in figures["models"][name]["headline"].items()))
    figures["total_s"] = time.perf_counter() - t_all
    notes = (f"MOSI dev split ({runs['tbert'][0]['n_dev'] if runs['tbert'] else '?'} rows) of the CM-BERT paper, "
             f"{len(pair_times)} seed(s) (1, 11, ...), {args.epochs} epochs, encoder MiniLM-L6 (6 layers, hidden 384), "
             f"--workers {args.workers}, CPU (2 cores shared with other jobs). CM-BERT sees no audio here (text-only "
             "rows, audio_dim 1 of zeros, paper mode). Not comparable one-to-one with the paper's reference "
             "(T-BERT with BERT-base on the test split: Acc2 83.2, F1 83.2, MAE 0.784, Corr 0.774, Acc7 41.5): "
             "a smaller encoder, the dev split, and the paper's Acc2/F1 convention differs from both "
             "has0 and non0 given here (see cmbert/metrics.py). Model selection is the epoch with the lowest dev "
             "loss, so dev figures are slightly optimistic.")
    write_result("mosi", figures, notes=notes)


if __name__ == "__main__":
    main()
