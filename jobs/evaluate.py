"""Evaluate: checkpoint + utterances -> metrics JSON (per seed, and mean ± std when there are several seeds).

    python jobs/evaluate.py --checkpoint DIR_OR_S3_URI --data UTTERANCES_URI --output metrics.json
        [--heatmaps DIR] [--heatmap-count N] [--label-column label] [--batch-size 64]

Metrics are MMSA's (cmbert/metrics.py): has0/non0 Acc2 and F1, MAE, Pearson, Acc7, Acc5; beside each Acc2 the
data's majority-class rate (what always predicting the larger class scores), printed and in the JSON as
``majority``. Heatmaps (alpha_t and W_m per utterance, as the paper's Figure 4) come from the best seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

try:
    from jobs import _wiring
except ImportError:  # python jobs/evaluate.py: jobs/ is on sys.path, the repo root may not be
    import _wiring

import numpy as np
import torch

from cmbert import storage
from cmbert.checkpoint import load_checkpoint, read_meta, seed_checkpoints
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


def run(cfg: EvaluateConfig) -> dict:
    """Metrics per seed (and mean ± std over seeds), written to ``cfg.output``; the result."""
    device = "cuda:0" if cfg.gpu and torch.cuda.is_available() else "cpu"
    rows = read_rows(cfg.data, cfg.label_column)
    labels = np.array([r["label"] for r in rows], dtype=np.float64)
    top_meta = read_meta(cfg.checkpoint)
    per_seed, heatmap_files = [], []
    for uri in seed_checkpoints(cfg.checkpoint):
        lm = load_checkpoint(uri, device=device)
        audio = ModelAudio.from_meta(lm.meta, lm.config)
        check_compatible(audio, {(r["feature_set"], r["feature_dim"]) for r in rows if r["audio_present"]},
                         f"the utterances in {cfg.data}")  # the one rule, as scoring's
        is_best = top_meta.best is None or uri.rstrip("/").endswith("/" + top_meta.best)
        draw = range(min(cfg.heatmap_count, len(rows))) if (cfg.heatmaps and is_best) else ()
        seen = [without_audio(r) for r in rows] if audio.text_only else rows  # as scoring does
        scores, attention = predict_rows(lm.model, lm.tokenizer, seen, lm.config.max_len, lm.config.audio_dim,
                                         batch_size=cfg.batch_size, device=device, keep_attention=draw)
        per_seed.append({"checkpoint": uri, "seed": lm.meta.seed, "model_version": lm.meta.model_version,
                         "metrics": regression_metrics(scores, labels)})
        if attention:
            from cmbert.heatmaps import write_attention_heatmaps

            heatmap_files = write_attention_heatmaps(lm.tokenizer, attention, rows, scores, cfg.heatmaps)
    result = {"data": cfg.data, "checkpoint": cfg.checkpoint, "model_id": top_meta.model_id,
              "n_rows": len(rows), "majority": majority_rates(labels), "per_seed": per_seed,
              "mean_std": aggregate([s["metrics"] for s in per_seed]), "heatmaps": heatmap_files,
              "code_version": code_version(), "config": asdict(cfg)}
    storage.write_json(cfg.output, json_safe(result))
    return result


def report(cfg: EvaluateConfig, result: dict) -> None:
    for k, v in result["mean_std"].items():
        floor = f"  (majority class {result['majority'][k]:.4f})" if k in result["majority"] else ""
        print(f"{k}: {v['mean']:.4f} ± {v['std']:.4f} over {v['n']} seed(s){floor}")


def read_rows(uri: str, label_column: str) -> list[dict]:
    """Labelled utterance rows, in a fixed order (utterance_id)."""
    table, _ = read_utterances(uri, label_column)
    return sorted(table.to_pylist(), key=lambda r: r["utterance_id"])


def main(argv: list[str] | None = None) -> int:
    return _wiring.run_job("evaluate", EvaluateConfig, run, report, argv)


if __name__ == "__main__":
    _wiring.exit_with(main)
