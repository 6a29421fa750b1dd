"""The GPU path: scoring and training throughput with MFU, and the RAVDESS models trained on a GPU.

    python bench/bench_gpu.py --encoder DIR [--ravdess DIR] [--seeds 5] [--epochs 3] [--out FILE]

Runs the project's own code on one CUDA device, without Ray (the lent GPU machines here have torch and
transformers but no Ray, and nothing can be installed there beyond what a call carries):
- scoring: ``cmbert.scoring.Scorer`` / ``score_rows`` (the pure function behind jobs/score.py's Ray actors) on
  synthetic utterances (5-40 words), length-bucketed batches vs one utterance at a time, fp32 and bf16 autocast;
- training: ``jobs/train.py``'s ``train_func`` (the written-out loop: forward, MSE, backward, Adam) with an
  in-process stand-in for Ray Train's session, on synthetic utterances, batch 24 (paper) and 256, fp32 and bf16;
- RAVDESS (when ``--ravdess DIR`` holds train/ and dev/ utterance datasets, from bench/bench_ravdess.py's split):
  T-BERT, paper mode and the hearing variants through the same train_func on the GPU, ``--seeds`` seeds each;
  the figure is binary valence accuracy (non0) on the dev speakers at each seed's lowest-dev-loss epoch.
MFU = analytic model FLOPs / time / the matmul peak measured on the same GPU in the same run (8192^3
products; bf16, and fp32 with TF32 off), and against the datasheet's dense bf16 peak (989 TFLOP/s).
Writes JSON (``--out``, default bench/results/gpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import REPO, machine_info, summary  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))
DATASHEET_BF16 = 989e12  # H100/H200 SXM dense bf16
DEVICE = "cuda"  # --device cpu: a dry run of this script on a machine without a GPU


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype, n: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2.0 * n ** 3 * repeats / (time.perf_counter() - t0)


def gpu_session(rows: dict):
    """train_func's view of Ray Train on one in-process GPU worker (cmbert.testing.LocalSession); keeps every
    epoch's metrics, no checkpoint copies."""
    from cmbert.testing import LocalSession

    return LocalSession(rows, device=DEVICE, keep_checkpoints=False)


def loop_config(model_cfg, seed: int, feature_set: str, feature_dim: int, **loop) -> dict:
    """train_func's config (cmbert.training.TrainLoopConfig); ``loop``: epochs, batch_size, precision, fusion_lr..."""
    from cmbert import testing

    return testing.loop_config(model_cfg, seed=seed, feature_set=feature_set, feature_dim=feature_dim,
                               model_id="bench-gpu", threads=8, run_id="bench-gpu", code_version="bench",
                               missing_audio="zeros", **loop)


# ---------------------------------------------------------------- scoring


def bench_score(encoder: str, peaks: dict, rows_n: int, naive_n: int) -> dict:
    import numpy as np
    import torch

    from bench_score import forward_flops, synthetic_table
    from cmbert.collate import collate, token_lengths
    from cmbert.model import CMBertConfig, build_model, load_tokenizer
    from cmbert.scoring import INPUT_COLUMNS, Scorer, score_rows

    torch.manual_seed(0)
    cfg = CMBertConfig(encoder=encoder, audio_dim=25, cls_audio="mean", audio_values=True)
    model, tok = build_model(cfg).to(DEVICE).eval(), load_tokenizer(cfg)
    rows = synthetic_table(rows_n).select(INPUT_COLUMNS).to_pylist()
    lengths = token_lengths(rows, tok, cfg.max_len)
    flops = forward_flops(cfg, lengths)
    flops_naive = forward_flops(cfg, lengths[:naive_n])
    out = {"rows": rows_n, "naive_rows": naive_n, "tokens_mean": statistics.mean(lengths),
           "gflop_per_utterance": flops / rows_n / 1e9}
    reference = None
    for precision in ("fp32", "bf16"):
        peak = peaks[precision]
        res = {}
        for bs in (32, 256, 1024):
            scorer = Scorer(model, tok, cfg.max_len, cfg.audio_dim, collate, DEVICE, bs, token_lengths, precision)
            score_rows(rows[:bs], scorer)  # warm-up
            times = []
            for _ in range(3):
                sync()
                t0 = time.perf_counter()
                scores, errors = score_rows(rows, scorer, lengths)
                sync()
                times.append(time.perf_counter() - t0)
            assert not any(errors)
            if reference is None:
                reference = scores
            res[f"batched_{bs}"] = {"utterances_per_s": summary([rows_n / t for t in times]),
                                    "mfu_vs_measured_peak": summary([flops / t / peak for t in times]),
                                    "max_abs_diff_vs_fp32": float(np.max(np.abs(scores - reference)))}
        # The model alone: the same batches collated beforehand (tokenising and collating run on the CPU).
        from cmbert.collate import length_buckets

        batches = [{k: v.to(DEVICE) for k, v in collate([rows[i] for i in idx], tok, cfg.max_len, 25).items()}
                   for idx in length_buckets(lengths, 1024)]
        with torch.inference_mode(), torch.autocast(DEVICE, torch.bfloat16, enabled=precision == "bf16"):
            model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"],
                  audio=batches[0]["audio"])
            times = []
            for _ in range(3):
                sync()
                t0 = time.perf_counter()
                for b in batches:
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], audio=b["audio"])
                sync()
                times.append(time.perf_counter() - t0)
        res["model_only_1024"] = {"utterances_per_s": summary([rows_n / t for t in times]),
                                  "mfu_vs_measured_peak": summary([flops / t / peak for t in times]),
                                  "mfu_vs_datasheet_bf16": summary([flops / t / DATASHEET_BF16 for t in times])}
        scorer = Scorer(model, tok, cfg.max_len, cfg.audio_dim, collate, DEVICE, 1, token_lengths, precision)
        t0 = time.perf_counter()
        for r in rows[:naive_n]:
            scorer.forward([r])
        sync()
        tn = time.perf_counter() - t0
        res["naive"] = {"utterances_per_s": naive_n / tn, "mfu_vs_measured_peak": flops_naive / tn / peak}
        best = max(v["utterances_per_s"]["median"] for k, v in res.items() if k.startswith("batched_"))
        res["best_batched_over_naive"] = best / res["naive"]["utterances_per_s"]
        out[precision] = res
        print(f"[gpu] score {precision}: " + ", ".join(
            f"{k} {v['utterances_per_s']['median'] if isinstance(v['utterances_per_s'], dict) else v['utterances_per_s']:.0f} utt/s"
            for k, v in res.items() if k != "best_batched_over_naive"), flush=True)
    return out


# ---------------------------------------------------------------- training throughput


def bench_train(encoder: str, peaks: dict, rows_n: int) -> dict:
    import torch

    from bench_train import synthetic_rows, train_flops_per_sample
    from cmbert.collate import token_lengths
    from cmbert.model import CMBertConfig, load_tokenizer
    from cmbert.training import train_func

    rows = synthetic_rows(rows_n, 12)
    model_cfg = CMBertConfig(encoder=encoder, audio_dim=25, cls_audio="mean", audio_values=True)
    tok = load_tokenizer(model_cfg)
    tokens = statistics.mean(token_lengths(rows, tok, 50))
    flops_per_sample = train_flops_per_sample(model_cfg, tokens)
    out = {"rows": rows_n, "tokens_mean": tokens, "gflop_per_sample": flops_per_sample / 1e9}
    for precision in ("fp32", "bf16"):
        for bs in (24, 256):
            session = gpu_session({"train": rows, "dev": rows[:64]})
            train_func(loop_config(model_cfg, 1, "bench", 25, epochs=2, batch_size=bs, precision=precision), session)
            rate = session.reports[-1][0]["train_rows_per_s"]  # epoch 2: warm (epoch 1 pays CUDA start-up)
            out[f"{precision}_batch{bs}"] = {"rows_per_s": rate,
                                             "mfu_vs_measured_peak": rate * flops_per_sample / peaks[precision],
                                             "mfu_vs_datasheet_bf16": rate * flops_per_sample / DATASHEET_BF16}
            print(f"[gpu] train {precision} batch {bs}: {rate:.0f} rows/s", flush=True)
    return out


# ---------------------------------------------------------------- real data on the GPU

PAPER = {"cls_audio": "zero", "audio_values": False, "fusion_lr": 0.01}
RAVDESS_MODELS = {  # name -> TrainConfig options (as bench/bench_ravdess.py)
    "tbert": {"fusion": "none"},
    "paper": PAPER,
    "attention": {"cls_audio": "mean", "audio_values": False},
    "values": {"cls_audio": "zero", "audio_values": True},
    "variant": {},  # the job's defaults: --cls-audio mean --audio-values --fusion-lr 1e-3
}
MOSI_MODELS = {  # audio absent: the variant is the paper's model at its own fusion lr
    "tbert": {"fusion": "none"},
    "paper": PAPER,
    "variant": {},
}
HEADLINE = ("non0_acc2", "has0_acc2", "non0_f1", "mae", "corr", "acc7")


def bench_models(encoder: str, root: str, models: dict, seeds: int, epochs: int, deadline: float,
                 save, out: dict) -> dict:
    """Each model x seed through train_func on the GPU; dev metrics at each seed's lowest-dev-loss epoch."""
    import numpy as np

    from dataclasses import fields

    from cmbert import training
    from cmbert.collate import read_utterances
    from cmbert.model import CMBertConfig

    train_table, _ = read_utterances(os.path.join(root, "train", "utterances"))
    dev_table, _ = read_utterances(os.path.join(root, "dev", "utterances"))
    feature_set, feature_dim = training.feature_info(train_table, dev_table)
    mean, std = training.audio_stats(train_table, feature_dim)
    model_fields = {f.name for f in fields(CMBertConfig)}
    rows = {"train": train_table.to_pylist(), "dev": dev_table.to_pylist()}
    out.update({"data": root, "feature_set": feature_set, "feature_dim": feature_dim, "epochs": epochs,
                "train_rows": len(rows["train"]), "dev_rows": len(rows["dev"]), "models": {}})
    for name, opts in models.items():
        per_seed, t0 = [], time.perf_counter()
        for seed in training.seed_list(seeds):
            if time.perf_counter() > deadline:
                print(f"[gpu] {name}: time budget spent, seed {seed} not run", flush=True)
                break
            model_cfg = CMBertConfig(encoder=encoder, audio_dim=max(feature_dim, 1), audio_mean=mean, audio_std=std,
                                     **{k: v for k, v in opts.items() if k in model_fields})
            loop = {k: v for k, v in opts.items() if k not in model_fields}
            session = gpu_session(rows)
            ts = time.perf_counter()
            training.train_func(loop_config(model_cfg, seed, feature_set, feature_dim, epochs=epochs, **loop), session)
            reports = [m for m, _ in session.reports]
            best = min(reports, key=lambda m: m["dev_loss"])
            per_seed.append({"seed": seed, "best_epoch": best["epoch"], "seconds": time.perf_counter() - ts,
                             "train_rows_per_s": [m["train_rows_per_s"] for m in reports],
                             **{k[4:]: v for k, v in best.items() if k.startswith("dev_")}})
        if not per_seed:
            continue
        entry = {"options": opts, "per_seed": per_seed, "seconds": time.perf_counter() - t0}
        for k in HEADLINE + ("loss",):
            v = [s[k] for s in per_seed]
            entry[k] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                        "n": len(v)}
        out["models"][name] = entry
        save()
        print(f"[gpu] {os.path.basename(root.rstrip('/'))} {name}: " + ", ".join(
            f"{k} {entry[k]['mean']:.3f}±{entry[k]['std']:.3f}" for k in HEADLINE) +
            f" ({len(per_seed)} seeds, {entry['seconds']:.0f} s)", flush=True)
    return out


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--ravdess", default=None, help="folder with train/utterances and dev/utterances")
    p.add_argument("--mosi", default=None, help="folder with train/utterances and dev/utterances (text only)")
    p.add_argument("--budget-s", type=float, default=480, help="stop starting new training runs after this")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="MOSI epochs (paper: 3)")
    p.add_argument("--ravdess-epochs", type=int, default=8)
    p.add_argument("--score-rows", type=int, default=4096)
    p.add_argument("--naive-rows", type=int, default=512)
    p.add_argument("--train-rows", type=int, default=2048)
    p.add_argument("--only", nargs="*", default=["score", "train", "ravdess", "mosi"])
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu.json"))
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the script (tiny sizes)")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("[gpu] skipped: no CUDA device here (bench/results/gpu*.json keep the last GPU run)", flush=True)
        return
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the fp32 peak below is measured so too)
    t_all = time.perf_counter()
    n = 8192 if DEVICE == "cuda" else 512
    peaks = {"bf16": matmul_peak(torch.bfloat16, n), "fp32": matmul_peak(torch.float32, n // 2, repeats=5)}
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    print(f"[gpu] {name}: matmul peak bf16 {peaks['bf16'] / 1e12:.0f} TFLOP/s, "
          f"fp32 {peaks['fp32'] / 1e12:.1f} TFLOP/s", flush=True)
    figures = {"device": name, "matmul_peak_flops": peaks,
               "datasheet_bf16_flops": DATASHEET_BF16}
    deadline = t_all + args.budget_s
    save = lambda: _write(args.out, figures)  # noqa: E731
    for part, fn in (("score", lambda: bench_score(args.encoder, peaks, args.score_rows, args.naive_rows)),
                     ("train", lambda: bench_train(args.encoder, peaks, args.train_rows)),
                     ("ravdess", lambda: bench_models(args.encoder, args.ravdess, RAVDESS_MODELS, args.seeds,
                                                      args.ravdess_epochs, deadline, save, figures.setdefault("ravdess", {}))),
                     ("mosi", lambda: bench_models(args.encoder, args.mosi, MOSI_MODELS, args.seeds, args.epochs,
                                                   deadline, save, figures.setdefault("mosi", {})))):
        if part in args.only and (part not in ("ravdess", "mosi") or getattr(args, part)):
            t0 = time.perf_counter()
            try:
                figures[part] = fn()
            except Exception as exc:  # one part failing must not lose the others' figures
                import traceback

                traceback.print_exc()
                figures[part] = {"error": f"{type(exc).__name__}: {exc}"}
            figures[f"{part}_seconds"] = time.perf_counter() - t0
            _write(args.out, figures)
    figures["total_seconds"] = time.perf_counter() - t_all
    _write(args.out, figures)


def _write(path: str, figures: dict) -> None:
    doc = {"name": "gpu", "command": " ".join(["python"] + sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine_info(), "figures": figures}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True, default=str)
    print(f"[gpu] wrote {path}", flush=True)


if __name__ == "__main__":
    main()
