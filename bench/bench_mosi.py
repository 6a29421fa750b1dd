"""CMU-MOSI text (no audio here): T-BERT vs CM-BERT (audio absent) with each encoder, several seeds, MMSA metrics on dev.

    python bench/bench_mosi.py [--work runs/bench-mosi] [--encoders mpnet,minilm] [--models cmbert,tbert]
        [--seeds 5] [--seed-values 111,1111] [--budget-min 120] [--epochs N] [--workers 1] [--reuse] [--merge]
        [--train-args "--loss l1 ..."] [--results mosi]

../shared/data/mosi-text/train.tsv (1284 rows) and dev.tsv (the CM-BERT paper's split) become text-only
utterance datasets with the real preprocess job (jobs/preprocess.py main(), --manifest FILE --output DIR; audio
marked absent). Each (encoder, model, seed) is then one in-process call of jobs/train.py main() (Ray Train,
--workers 1, at most --epochs epochs, the job's defaults otherwise, early stopping included) and one of
jobs/evaluate.py main() on dev; each seed's entry carries the train job's own record of its training (best epoch,
epochs run, whether it stopped early, the per-epoch dev history: bench/common.py seed_training). Seeds are the
job's own (1, 11, 111, ...), given to the job one at a time, seed-major: every (encoder, model) of seed 1 (in the
order given: by default MPNet CM-BERT, MiniLM CM-BERT, MPNet T-BERT, MiniLM T-BERT) before any of seed 11, so an
interrupted or budget-limited run still has the most important figures. A run starts only when the elapsed time
plus that (encoder, model)'s last measured time stays within --budget-min. With --reuse, finished runs of an
earlier invocation in --work are kept (so seeds can be added later); with --merge, the per-seed results already in
bench/results/mosi.json (of seeds and models not run now, e.g. made in another checkout) are kept and the means
are taken over all of them (each kept entry is marked ``from_results_file`` with that file's git and time). Reports
mean ± std (ddof=1) over seeds, the training wall time, and MFU: cmbert.model.estimate_flops's analytic training
FLOPs per sample (at
the training rows' mean word-piece count) x rows/s / 167 GFLOP/s (the fp32 peak in ../shared/STACK.md), both from
the job's in-loop rows/s (last epoch) and from the whole train job's wall time (Ray start-up, dev evaluation each
epoch and checkpoint writes included). ``--train-args`` appends jobs/train.py flags to every run (recipe
exploration, e.g. ``--loss l1``); ``--results NAME`` writes bench/results/NAME.json (and --merge reads it) instead
of bench/results/mosi.json, the plain command's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import PEAK_FLOPS, REPO, SHARED_DATA, merge_seeds, seed_training, write_result  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))

ENCODERS = {"mpnet": "all-mpnet-base-v2 (MPNet, 12 layers, hidden 768)",
            "minilm": "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384)"}
MODELS = {"cmbert": ("CM-BERT, audio absent (job defaults)", ["--fusion", "cmbert"]),
          "tbert": ("T-BERT (--fusion none)", ["--fusion", "none"])}
PAPER_CMBERT_TEST = {"acc2": 84.5, "f1": 84.5, "mae": 0.729, "corr": 0.791, "acc7": 44.9}
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
    """One (encoder_model, seed): train, evaluate on dev, MFU. ``name`` is e.g. ``mpnet_cmbert``."""
    from cmbert.training import TrainLoopConfig

    result = train_and_evaluate(name, seed, extra, train_uri, dev_uri, args)
    result |= mfu(result, os.path.join(args.work, "models", name, f"seed-{seed}"), train_uri,
                  result["epochs_run"] or args.epochs or TrainLoopConfig().epochs)  # early stopping: maybe fewer
    return result


def mfu(result: dict, model_dir: str, train_uri: str, epochs: int) -> dict:
    """MFU of one training run of ``epochs`` epochs, from cmbert.model.estimate_flops at the training rows' mean
    word-piece count."""
    from cmbert.checkpoint import load_checkpoint
    from cmbert.collate import read_utterances, token_lengths
    from cmbert.model import estimate_flops

    lm = load_checkpoint(model_dir)
    table, _ = read_utterances(train_uri)
    rows = table.to_pylist()
    tokens = sum(token_lengths(rows, lm.tokenizer, lm.config.max_len)) / len(rows)
    flops = estimate_flops(lm.config, tokens)["train"]
    in_loop = result.get("train_rows_per_s_last_epoch") or result["train_rows_per_s"]
    wall_rows_per_s = len(rows) * epochs / result["train_s"]
    return {"tokens_per_row": tokens, "train_gflop_per_row": flops / 1e9, "rows_per_s_wall": wall_rows_per_s,
            "mfu_fp32_in_loop": flops * in_loop / PEAK_FLOPS["fp32"],
            "mfu_fp32_wall": flops * wall_rows_per_s / PEAK_FLOPS["fp32"]}


def train_and_evaluate(name: str, seed: int, extra: list[str], train_uri: str, dev_uri: str, args) -> dict:
    import evaluate as evaluate_job
    import train as train_job

    model_dir = os.path.join(args.work, "models", name, f"seed-{seed}")
    eval_json = os.path.join(args.work, "eval", name, f"seed-{seed}.json")
    argv = (["--train", train_uri, "--dev", dev_uri, "--output", model_dir, "--seed-values", str(seed),
             "--workers", str(args.workers)] + (["--epochs", str(args.epochs)] if args.epochs else []) + extra
            + shlex.split(args.train_args))
    if args.reuse and os.path.exists(eval_json) and os.path.exists(os.path.join(model_dir, "summary.json")):
        return reused(seed, argv, model_dir, eval_json)
    shutil.rmtree(model_dir, ignore_errors=True)
    print(f"[mosi] {name} seed {seed}: train {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    if train_job.main(argv):
        raise SystemExit(f"train {name} seed {seed} failed")
    train_s = time.perf_counter() - t0
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    t0 = time.perf_counter()
    if evaluate_job.main(["--checkpoint", model_dir, "--data", dev_uri, "--output", eval_json]):
        raise SystemExit(f"evaluate {name} seed {seed} failed")
    eval_s = time.perf_counter() - t0
    with open(eval_json) as f:
        result = json.load(f)
    metrics = result["per_seed"][0]["metrics"]
    return {"seed": seed, "train_argv": argv, "train_s": train_s, "eval_s": eval_s, "metrics": metrics,
            **seed_training(summary["seeds"][0]), "n_dev": result["n_rows"],
            "train_rows_per_s": summary["seeds"][0]["train_rows_per_s"],
            "train_rows_per_s_last_epoch": summary["seeds"][0].get("train_rows_per_s_last_epoch")}


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
            "metrics": result["per_seed"][0]["metrics"], **seed_training(summary["seeds"][0]),
            "n_dev": result["n_rows"], "train_rows_per_s": summary["seeds"][0]["train_rows_per_s"],
            "train_rows_per_s_last_epoch": summary["seeds"][0].get("train_rows_per_s_last_epoch")}


def merge_previous(runs: dict[str, list[dict]], order: list[tuple[str, str]], results: str) -> None:
    """Add to ``runs`` the per-seed results of bench/results/<results>.json whose (name, seed) did not run now;
    names not asked for now are kept too (common.merge_seeds)."""
    from common import RESULTS

    path = RESULTS / f"{results}.json"
    if not path.exists():
        return
    with open(path) as f:
        old = json.load(f)
    for name, entry in old["figures"].get("models", {}).items():
        if name not in runs:
            order.append((entry["model"], entry["encoder"]))
            runs[name] = []
        runs[name] = merge_seeds(runs[name], entry["per_seed"], old)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "bench-mosi"))
    p.add_argument("--encoders", default="mpnet,minilm", help=f"comma-separated, of {', '.join(ENCODERS)}")
    p.add_argument("--models", default="cmbert,tbert", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--seeds", type=int, default=5, help="at most this many seeds (paper: 5)")
    p.add_argument("--seed-values", default=None, help="comma-separated seeds to run (default: the job's first "
                   "--seeds seeds, 1, 11, 111, ...)")
    p.add_argument("--merge", action="store_true", help="keep the per-seed results of bench/results/mosi.json "
                   "for seeds and models not run now, and aggregate over all of them")
    p.add_argument("--budget-min", type=float, default=120.0, help="start another run only within this")
    p.add_argument("--epochs", type=int, default=None, help="at most this many (default: the job's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--train-args", default="", help="more jobs/train.py flags for every run, one string")
    p.add_argument("--results", default="mosi", help="bench/results/NAME.json to write (and to --merge)")
    p.add_argument("--reuse", action="store_true", help="keep finished (encoder, model, seed) runs of an earlier "
                   "invocation in --work; the budget then counts only this invocation's new runs")
    args = p.parse_args()
    encoders, model_names = args.encoders.split(","), args.models.split(",")
    for name in encoders + model_names:
        if name not in ENCODERS and name not in MODELS:
            raise SystemExit(f"unknown encoder or model {name!r}")
    t_all = time.perf_counter()

    from cmbert.metrics import aggregate
    from cmbert.training import TrainLoopConfig, chosen_seeds

    train_uri, pre_train_s = preprocess("train", args.work, args.reuse)
    dev_uri, pre_dev_s = preprocess("dev", args.work, args.reuse)
    order = [(m, e) for m in model_names for e in encoders]  # CM-BERT of every encoder first, then T-BERT
    runs: dict[str, list[dict]] = {f"{e}_{m}": [] for m, e in order}
    budget, last_s, stopped = args.budget_min * 60, {}, []
    seeds = chosen_seeds(args.seeds, args.seed_values)
    for seed in seeds:
        for model, encoder in order:
            name = f"{encoder}_{model}"
            elapsed = time.perf_counter() - t_all
            if name in last_s and elapsed + last_s[name] > budget:
                stopped.append(f"{name} seed {seed}")
                continue
            r = run_one(name, seed, ["--encoder", encoder] + MODELS[model][1], train_uri, dev_uri, args)
            runs[name].append(r)
            last_s[name] = 0.0 if r.get("reused") else r["train_s"] + (r["eval_s"] or 0.0)
            print(f"[mosi] {name} seed {seed}: {json.dumps(r['metrics'])} train {r['train_s']:.0f}s "
                  f"MFU {100 * r['mfu_fp32_in_loop']:.1f}% in loop", flush=True)
    if args.merge:
        merge_previous(runs, order, args.results)
    if stopped:
        print(f"[mosi] not run (budget {budget:.0f}s): {', '.join(stopped)}", flush=True)

    figures = {"data": {"train": train_uri, "dev": dev_uri, "preprocess_s": {"train": pre_train_s, "dev": pre_dev_s}},
               "seeds_max": args.seeds, "epochs": args.epochs or TrainLoopConfig().epochs, "models": {},
               "not_run": stopped,
               "seeds_run": {name: len(rs) for name, rs in runs.items()},
               "paper_reference_test": {"tbert_bert_base": PAPER_TBERT_TEST, "cmbert_bert_base": PAPER_CMBERT_TEST}}
    for model, encoder in order:
        name = f"{encoder}_{model}"
        rs = runs[name]
        if not rs:
            continue
        agg = aggregate([r["metrics"] for r in rs])
        figures["models"][name] = {
            "title": f"{MODELS[model][0]}, encoder {ENCODERS[encoder]}", "encoder": encoder, "model": model,
            "seeds": [r["seed"] for r in rs], "n_seeds": len(rs), "mean_std": agg,
            "headline": {k: (f"{agg[k]['mean']:.4f} ± {agg[k]['std']:.4f} ({agg[k]['n']} seeds)" if agg[k]["n"] > 1
                             else f"{agg[k]['mean']:.4f} (1 seed, no std)") for k in HEADLINE if k in agg},
            "per_seed": rs,
            "train_s": {"mean": sum(r["train_s"] for r in rs) / len(rs), "all": [r["train_s"] for r in rs]},
            "mfu_fp32_in_loop": sum(r["mfu_fp32_in_loop"] for r in rs) / len(rs),
            "mfu_fp32_wall": sum(r["mfu_fp32_wall"] for r in rs) / len(rs)}
        print(f"[mosi] {name}: " + "  ".join(f"{k} {v}" for k, v in figures["models"][name]["headline"].items()))
    figures["total_s"] = time.perf_counter() - t_all
    n_dev = next((rs[0]["n_dev"] for rs in runs.values() if rs), "?")
    notes = (f"MOSI dev split ({n_dev} rows) of the CM-BERT paper; seeds per (encoder, model) in seeds_run "
             f"(1, 11, ...), at most {args.epochs or TrainLoopConfig().epochs} epochs (early stopping: the job's "
             f"--patience {TrainLoopConfig().patience}; per seed epochs_run, stopped_early, history), --workers "
             f"{args.workers}, CPU: 2 cores SHARED with other agents' "
             "tests and builds while measured, so times and MFU are pessimistic and noisy. CM-BERT sees no audio "
             "here (text-only rows, audio_dim 1 of zeros: the fusion's attention over text only). Not comparable "
             "one-to-one with the paper's references (BERT-base on the test split): the dev split, and the "
             "paper's Acc2/F1 convention differs from both has0 and non0 given here (see cmbert/metrics.py). "
             "Model selection is the epoch with the lowest dev loss, so dev figures are slightly optimistic.")
    figures["train_args_extra"] = shlex.split(args.train_args)
    write_result(args.results, figures, notes=notes)


if __name__ == "__main__":
    main()
