"""Training throughput (samples/s) and model FLOPs utilisation (MFU): a plain single-process loop vs Ray Train DDP.

    python bench/bench_train.py [--encoder mpnet|minilm] [--rows 240] [--steps 10] [--words 12] [--epochs 2] [--skip-ray]

Synthetic utterances (``--words`` words each, 25-d word audio) through CM-BERT with jobs/train.py's defaults (audio
at [CLS] and in the attention's values), batch 24.
MFU = analytic training FLOPs per sample (cmbert.model.estimate_flops: 3x the forward matmuls: encoder, attention,
fusion, head)
x samples/s / the fp32 matmul peak in ../shared/STACK.md (167 GFLOP/s on 2 threads). The plain loop times
``--steps`` steps after two warm-up steps; the Ray Train figure is the last of ``--epochs`` epochs' rows/s from
inside train_func (collate included; start-up and epoch 0's warm-up excluded); fit_s is the whole fit().
Writes bench/results/train.json for the default encoder (all-mpnet-base-v2), train-ENCODER.json otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import PEAK_FLOPS, REPO, summary, write_result  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))

AUDIO_DIM = 25
VOCAB = ("the movie was really not very good bad great awful acting plot funny boring i liked it hated loved "
         "story characters ending music director so kind of").split()


def synthetic_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    """``n`` labelled utterances of ``words`` words with 25-d generated word audio (cmbert.testing)."""
    from cmbert.testing import utterance_rows

    return utterance_rows(n, seed=seed, words=(words, words), vocab=VOCAB, audio_dim=AUDIO_DIM,
                          feature_set="bench", run_id="bench")


def train_flops_per_sample(config, tokens: float) -> float:
    """Training FLOPs of one utterance of ``tokens`` word-pieces (cmbert.model.estimate_flops)."""
    from cmbert.model import estimate_flops

    return estimate_flops(config, tokens)["train"]


def plain_loop(encoder: str, rows: list[dict], steps: int, batch: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from cmbert.collate import collate, token_lengths
    from cmbert.model import CMBertConfig, build_model, load_tokenizer
    from cmbert.training import TrainLoopConfig, make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = CMBertConfig(encoder=encoder, audio_dim=AUDIO_DIM, cls_audio="mean", audio_values=True)  # jobs/train.py's defaults
    model, tok = build_model(cfg), load_tokenizer(cfg)
    opt = make_optimizer(model, TrainLoopConfig())  # the job's default rates and groups
    model.train()
    times, model_times = [], []
    for step in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        b = collate(rows[(step * batch) % len(rows):][:batch], tok, 50, AUDIO_DIM)
        t1 = time.perf_counter()
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], audio=b["audio"])
        loss = F.mse_loss(out.score, b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - t0)
            model_times.append(time.perf_counter() - t1)
    tokens = sum(token_lengths(rows, tok, 50)) / len(rows)
    flops = train_flops_per_sample(model.config, tokens)
    sps = batch / (sum(times) / len(times))
    model_sps = batch / (sum(model_times) / len(model_times))
    return {"samples_per_s": sps, "step_s": summary(times), "tokens_per_sample": tokens,
            "train_gflop_per_sample": flops / 1e9, "mfu_fp32": flops * sps / PEAK_FLOPS["fp32"],
            "model_only_samples_per_s": model_sps, "model_only_mfu_fp32": flops * model_sps / PEAK_FLOPS["fp32"],
            "threads": threads, "note": "collate + forward + backward + Adam step, like the Ray figure"}


def ray_train(encoder: str, rows: list[dict], workers: int, threads: int, flops: float, epochs: int) -> dict:
    import pyarrow as pa

    import train
    from cmbert.storage import write_table
    from schemas import UTTERANCES_SCHEMA

    tmp = tempfile.mkdtemp(prefix="cmbert-bench-")
    try:
        write_table(pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA), f"{tmp}/train", UTTERANCES_SCHEMA)
        write_table(pa.Table.from_pylist(rows[:24], schema=UTTERANCES_SCHEMA), f"{tmp}/dev", UTTERANCES_SCHEMA)
        t0 = time.perf_counter()
        code = train.main(["--train", f"{tmp}/train", "--dev", f"{tmp}/dev", "--output", f"{tmp}/out", "--encoder",
                           encoder, "--epochs", str(epochs), "--workers", str(workers), "--threads-per-worker",
                           str(threads)])
        fit_s = time.perf_counter() - t0
        if code:
            raise SystemExit(f"train failed with {code}")
        with open(f"{tmp}/out/summary.json") as f:
            s = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sps = s["seeds"][0]["train_rows_per_s_last_epoch"] or s["seeds"][0]["train_rows_per_s"]
    return {"samples_per_s": sps, "fit_s": fit_s, "epochs": epochs, "workers": workers, "threads_per_worker": threads,
            "mfu_fp32": flops * sps / PEAK_FLOPS["fp32"],
            "note": "the last epoch's rows/s inside train_func (epoch 0 carries the warm-up), collate included"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from cmbert.encoders import DEFAULT_ENCODER

    ap.add_argument("--encoder", default=DEFAULT_ENCODER, help="mpnet (default), minilm or a model directory")
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--words", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2, help="Ray runs: the last epoch's rows/s is quoted")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    rows = synthetic_rows(args.rows, args.words)
    figures = {"plain_2_threads": plain_loop(args.encoder, rows, args.steps, 24, 2)}
    flops = figures["plain_2_threads"]["train_gflop_per_sample"] * 1e9
    if not args.skip_ray:
        figures["ray_ddp_1_worker_2_threads"] = ray_train(args.encoder, rows, 1, 2, flops, args.epochs)
        figures["ray_ddp_2_workers_1_thread"] = ray_train(args.encoder, rows, 2, 1, flops, args.epochs)
        base = figures["plain_2_threads"]["samples_per_s"]
        for k in ("ray_ddp_1_worker_2_threads", "ray_ddp_2_workers_1_thread"):
            figures[k]["vs_plain"] = figures[k]["samples_per_s"] / base
            figures[k]["overhead_vs_plain"] = base / figures[k]["samples_per_s"] - 1
    name = "train" if args.encoder == DEFAULT_ENCODER else f"train-{os.path.basename(args.encoder.rstrip('/'))}"
    write_result(name, figures | {"config": vars(args), "encoder": args.encoder},
                 notes="samples/s include collation on both sides; MFU = analytic train FLOPs (3x forward matmuls) "
                       "x samples/s / 167 GFLOP/s (STACK.md fp32 peak). Ray figures are the epoch's rows/s inside "
                       "train_func (start-up excluded; fit_s is the whole fit()). Overhead = plain / Ray - 1.")
    for k, v in figures.items():
        if isinstance(v, dict) and "samples_per_s" in v:
            print(f"{k}: {v['samples_per_s']:.1f} samples/s, MFU {100 * v['mfu_fp32']:.1f}%")


if __name__ == "__main__":
    main()
