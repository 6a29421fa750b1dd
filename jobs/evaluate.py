"""Evaluate: checkpoint + utterances -> metrics JSON (per seed, and mean ± std when there are several seeds).

    python jobs/evaluate.py --checkpoint DIR_OR_S3_URI --data UTTERANCES_URI --output metrics.json
        [--heatmaps DIR] [--heatmap-count N] [--label-column label] [--batch-size 64]

Metrics are MMSA's (cmbert/metrics.py): has0/non0 Acc2 and F1, MAE, Pearson, Acc7, Acc5; beside each Acc2 the
data's majority-class rate (what always predicting the larger class scores), printed and in the JSON as
``majority``. Heatmaps (alpha_t and W_m per utterance, as the paper's Figure 4) come from the best seed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

try:
    import cmbert  # noqa: F401
except ImportError:  # run from a Ray working dir without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from cmbert import storage
from cmbert.checkpoint import load_checkpoint, read_meta, seed_checkpoints
from cmbert.cli import parse_config
from cmbert.collate import predict_rows, read_utterances
from cmbert.metrics import aggregate, json_safe, majority_rates, regression_metrics
from cmbert.runinfo import code_version
from cmbert.scoring import ModelAudio, check_compatible, without_audio


@dataclass
class EvaluateConfig:
    """Checkpoint + utterances -> metrics JSON."""

    checkpoint: str = field(metadata={"help": "checkpoint folder or s3:// URI (one seed, or a multi-seed output)"})
    data: str = field(metadata={"help": "utterances dataset (folder or s3:// URI) with labels"})
    output: str = field(metadata={"help": "metrics JSON file (local path or s3:// URI)"})
    heatmaps: str | None = field(default=None, metadata={"help": "folder for attention heatmap PNGs"})
    heatmap_count: int = field(default=8, metadata={"help": "utterances to draw heatmaps for"})
    label_column: str = field(default="label", metadata={"help": "column (or key of `extra`) with the target"})
    batch_size: int = field(default=64, metadata={"help": "utterances per forward pass"})
    gpu: bool = field(default=False, metadata={"help": "run on cuda:0"})


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(EvaluateConfig, argv)
    return run(cfg)


def run(cfg: EvaluateConfig) -> dict:
    device = "cuda:0" if cfg.gpu and torch.cuda.is_available() else "cpu"
    rows = read_rows(cfg.data, cfg.label_column)
    labels = np.array([r["label"] for r in rows], dtype=np.float64)
    top_meta = read_meta(cfg.checkpoint)
    uris = seed_checkpoints(cfg.checkpoint)
    best_name = top_meta.get("best")
    per_seed, heatmap_files = [], []
    for uri in uris:
        lm = load_checkpoint(uri, device=device)
        audio = ModelAudio.from_meta(lm.meta, lm.config)
        check_compatible(audio, {(r["feature_set"], r["feature_dim"]) for r in rows if r["audio_present"]},
                         f"the utterances in {cfg.data}")
        is_best = best_name is None or uri.rstrip("/").endswith("/" + best_name)
        draw = range(min(cfg.heatmap_count, len(rows))) if (cfg.heatmaps and is_best) else ()
        seen = [without_audio(r) for r in rows] if audio.text_only else rows  # as scoring does
        scores, attention = predict_rows(lm.model, lm.tokenizer, seen, lm.config.max_len, lm.config.audio_dim,
                                         batch_size=cfg.batch_size, device=device, keep_attention=draw)
        per_seed.append({"checkpoint": uri, "seed": lm.meta.get("seed"), "model_version": lm.meta["model_version"],
                         "metrics": regression_metrics(scores, labels)})
        if attention:
            from cmbert.heatmaps import write_attention_heatmaps

            heatmap_files = write_attention_heatmaps(lm.tokenizer, attention, rows, scores, cfg.heatmaps)
    result = {"data": cfg.data, "checkpoint": cfg.checkpoint, "model_id": top_meta.get("model_id"),
              "n_rows": len(rows), "majority": majority_rates(labels), "per_seed": per_seed,
              "mean_std": aggregate([s["metrics"] for s in per_seed]), "heatmaps": heatmap_files,
              "code_version": code_version(), "config": asdict(cfg)}
    loc = storage.locate(cfg.output)
    try:
        parent = os.path.dirname(loc.path)
        if parent:
            loc.fs.create_dir(parent, recursive=True)
        with loc.fs.open_output_stream(loc.path) as f:
            f.write(json.dumps(json_safe(result), indent=2, sort_keys=True).encode())
    except OSError as exc:
        raise storage.explain(exc, cfg.output, "write") from None
    for k, v in result["mean_std"].items():
        floor = f"  (majority class {result['majority'][k]:.4f})" if k in result["majority"] else ""
        print(f"{k}: {v['mean']:.4f} ± {v['std']:.4f} over {v['n']} seed(s){floor}")
    return result


def read_rows(uri: str, label_column: str) -> list[dict]:
    """Labelled utterance rows, in a fixed order (utterance_id)."""
    table, _ = read_utterances(uri, label_column)
    return sorted(table.to_pylist(), key=lambda r: r["utterance_id"])


if __name__ == "__main__":
    from cmbert.console import quiet_console

    quiet_console()
    main()
