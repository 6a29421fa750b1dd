"""Train: utterances -> CM-BERT checkpoints (Ray Train, DDP), one per seed, plus a summary over seeds.

    python jobs/train.py --train URI --dev URI --output DIR_OR_S3_URI [--encoder mpnet|minilm|PATH] [--fusion cmbert|none]
        [--cls-audio mean|zero] [--audio-values|--no-audio-values] [--seeds N | --seed-values 1111,11111] [--epochs 12]
        [--patience 3] [--workers N] [--gpu] [--precision fp32|bf16] [--batch-size 24] [--max-len 50] [--lr 2e-5]
        [--fusion-lr 1e-3] [--loss l1|mse] [--lr-schedule constant|linear] [--label-column label]

Defaults train our hearing variant (audio at [CLS] and in the fusion attention's values); the paper's CM-BERT,
whose score cannot depend on the audio, is ``--cls-audio zero --no-audio-values --fusion-lr 0.01``, and the
paper's schedule and loss, 3 epochs of MSE without early stopping, is ``--epochs 3 --patience 0 --loss mse``.
Each option's default lives in one place: the model's in ``cmbert.model.CMBertConfig``, the loop's in
``cmbert.training.TrainLoopConfig`` (the loop itself, ``train_func``, is there too); this file is the wiring.

OUTPUT gets seed-N/ (the epoch with the lowest dev loss of each seed), meta.json (names the best seed, so
OUTPUT itself loads with cmbert.checkpoint.load_checkpoint), summary.json (per seed: the best epoch's dev
metrics, the epochs run, whether early stopping ended it, the per-epoch dev history; mean and std over seeds),
runs/ (one RUNS_SCHEMA row) and _ray/ (Ray Train's per-epoch checkpoints: a killed run started again with the
same OUTPUT resumes each seed from its last finished epoch, early-stopping count included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

try:
    from jobs import _wiring
except ImportError:  # python jobs/train.py: jobs/ is on sys.path, the repo root may not be
    import _wiring

import pyarrow.compute as pc

from cmbert import storage
from cmbert.checkpoint import CheckpointMeta, write_multiseed_meta
from cmbert.cli import option, shared_fields
from cmbert.collate import read_utterances
from cmbert.encoders import resolve_encoder
from cmbert.errors import ConfigError, UserError
from cmbert.metrics import aggregate, json_safe
from cmbert.model import CMBertConfig
from cmbert.runinfo import code_version, new_run_id, utc_now
from cmbert.training import (TrainLoopConfig, audio_stats, chosen_seeds, default_model_id, feature_info,
                             publish_seed, record_train_run, train_func)


@dataclass
class TrainConfig:
    """Utterances -> CM-BERT checkpoints (paper: batch 24, max len 50, Adam, MSE, 3 epochs; here L1, up to
    --epochs with early stopping on dev loss)."""

    train: str = field(metadata={"help": "utterances dataset (folder or s3:// URI) to train on"})
    dev: str = field(metadata={"help": "utterances dataset for model selection (lowest dev loss)"})
    output: str = field(metadata={"help": "output folder or s3:// URI"})
    encoder: str = option(CMBertConfig, "encoder", help=(
        "mpnet = all-mpnet-base-v2 (12 layers, hidden 768; `make mpnet` installs it), minilm = the bundled "
        "all-MiniLM-L6-v2 (6 layers, hidden 384: small machines), or a model directory"))
    fusion: str = option(CMBertConfig, "fusion", choices=("cmbert", "none"), help="none = T-BERT")
    cls_audio: str = option(CMBertConfig, "cls_audio", choices=("zero", "mean"),
                            help="audio vector at [CLS]: zero = paper, mean = of its words")
    audio_values: bool = option(CMBertConfig, "audio_values", help="ours: the fusion attention's values carry the "
                                                                    "word audio too, so the voice reaches the score")
    audio_value_hidden: int = option(CMBertConfig, "audio_value_hidden", help="0 = V_a is linear; N = a bias-free "
                                     "MLP from word audio to the values, N hidden units (GELU)")
    audio_direct: bool = option(CMBertConfig, "audio_direct", help="ours: the mean word audio also reaches the score "
                                "directly (a bias-free linear term beside the head, zero at the start)")
    seeds: int = field(default=1, metadata={"help": "train this many seeds (1, 11, 111, ... as the authors)"})
    seed_values: str | None = field(default=None, metadata={"help": "comma-separated seeds to train instead of "
                                    "--seeds' first N (e.g. 1111,11111: add seeds to an earlier study)"})
    epochs: int = option(TrainLoopConfig, "epochs", help="passes over the training set, at most (paper: 3)")
    patience: int = option(TrainLoopConfig, "patience", help="stop a seed after this many epochs in a row without a "
                                                             "lower dev loss; 0 = run all --epochs (the paper)")
    workers: int = field(default=1, metadata={"help": "Ray Train DDP workers"})
    gpu: bool = field(default=False, metadata={"help": "one GPU per worker (NCCL); else CPU (gloo)"})
    batch_size: int = option(TrainLoopConfig, "batch_size", help="global batch size, split across workers")
    max_len: int = option(CMBertConfig, "max_len", help="word-pieces per utterance, [CLS] and [SEP] included")
    loss: str = option(TrainLoopConfig, "loss", choices=("l1", "mse"), help="training loss, also the dev loss "
                       "that early stopping and checkpoint selection compare (paper: mse)")
    precision: str = option(TrainLoopConfig, "precision", choices=("fp32", "bf16"),
                            help="bf16: autocast forward and loss (GPUs)")
    lr: float = option(TrainLoopConfig, "lr", help="Adam learning rate of the encoder and the head")
    fusion_lr: float = option(TrainLoopConfig, "fusion_lr", help="Adam learning rate of the masked multimodal "
                                                                  "attention (paper: 0.01, which diverges here: see README)")
    head_lr: float | None = option(TrainLoopConfig, "head_lr", help="learning rate of the regression head "
                                                                    "(default: --lr, as the paper's BERT rate)")
    audio_lr: float = option(TrainLoopConfig, "audio_lr", help="learning rate of the fusion's audio-only parameters "
                             "(audio projection, audio values, w_a); the paper's model leaves them untrained")
    lr_schedule: str = option(TrainLoopConfig, "lr_schedule", choices=("constant", "linear"),
                              help="linear: warm up over the first 10%% of the steps --epochs allow, then decay to 0 "
                                   "(the paper's BertAdam)")
    label_column: str = field(default="label", metadata={"help": "column (or key of `extra`) with the target"})
    proj_dim: int = option(CMBertConfig, "proj_dim", help="projection size of the masked multimodal attention")
    audio_kernel: int = option(CMBertConfig, "audio_kernel", help="Conv1D kernel of the audio projection (odd; "
                               ">1 lets each word's query see its neighbours' audio)")
    audio_norm: bool = field(default=True, metadata={"help": "standardise word audio with the training set's "
                                                             "per-feature mean and std (kept in the checkpoint)"})
    dropout: float = option(CMBertConfig, "dropout", help="dropout after the fusion and before the head")
    attention_dropout: float = option(CMBertConfig, "attention_dropout", help="dropout on W_m")
    threads_per_worker: int | None = field(default=None, metadata={"help": "torch threads (default CPUs/workers)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs Ray reserves per training worker"})
    max_failures: int = field(default=0, metadata={"help": "Ray Train restarts from the last checkpoint this often"})
    model_id: str | None = field(default=None, metadata={"help": "name recorded in meta.json and score rows"})


def run(cfg: TrainConfig) -> dict:
    """Read the data, derive the model config from it, fit each seed with Ray Train, publish; the summary."""
    resolve_encoder(cfg.encoder)  # EncoderMissing here is one line, not a traceback inside every Ray worker
    if cfg.batch_size % cfg.workers:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of --workers {cfg.workers}")
    if cfg.patience < 0:
        raise ConfigError(f"--patience {cfg.patience}: 0 (never stop early) or more epochs")
    seeds = chosen_seeds(cfg.seeds, cfg.seed_values)  # a bad list fails here, before Ray starts
    run_id, started = new_run_id("train"), utc_now()
    out = storage.locate(cfg.output)
    train_table, n_unlabelled = read_utterances(cfg.train, cfg.label_column)
    dev_table, _ = read_utterances(cfg.dev, cfg.label_column)
    if train_table.num_rows == 0:
        raise UserError(f"no labelled utterances in {cfg.train}")
    feature_set, feature_dim = feature_info(train_table, dev_table)
    # Audio-absent rows train with zero audio; a model that saw such rows may score them the same way.
    n_no_audio = train_table.num_rows - pc.sum(train_table.column("audio_present")).as_py()
    mean, std = audio_stats(train_table, feature_dim) if cfg.audio_norm else (None, None)
    model = CMBertConfig(**shared_fields(cfg, CMBertConfig), audio_dim=max(feature_dim, 1), audio_mean=mean,
                         audio_std=std)
    loop = TrainLoopConfig(**shared_fields(cfg, TrainLoopConfig) | {
        "model": model, "feature_set": feature_set, "feature_dim": feature_dim,
        "missing_audio": "zeros" if n_no_audio and feature_dim else "refuse",
        "model_id": cfg.model_id or default_model_id(model), "run_id": run_id, "code_version": code_version(),
        "train_config": asdict(cfg)})

    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from cmbert.raysetup import cluster_cpus, init_ray, torch_config

    init_ray()
    storage.require_shared(cfg.output)  # Ray Train's storage path: every node must see a local one (or use S3)
    loop.threads = cfg.threads_per_worker or max(1, int(cluster_cpus()) // cfg.workers)
    datasets = {"train": ray.data.from_arrow(train_table), "dev": ray.data.from_arrow(dev_table)}
    runs = []
    try:
        for seed in seeds:
            loop.seed = seed
            result = TorchTrainer(
                train_func, train_loop_config=loop.to_dict(), torch_config=torch_config(), datasets=datasets,
                scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker={
                    "CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.gpu else {})),
                run_config=ray.train.RunConfig(
                    name=f"seed-{seed}", storage_path=out.join("_ray").path, storage_filesystem=out.fs if out.is_s3 else None,
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="dev_loss",
                                                                 checkpoint_score_order="min"),
                    failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
                dataset_config=ray.train.DataConfig(datasets_to_split=[]),  # every worker sees all rows (train_func)
            ).fit()
            runs.append(publish_seed(result, out, seed))
            best = runs[-1]
            ran = f"{best['epochs_run']} epochs" + (" (stopped early)" if best["stopped_early"] else "")
            print(f"seed {seed}: best epoch {best['best_epoch']} dev_loss {best['dev']['loss']:.4f}; {ran}", flush=True)

        best_run = min(runs, key=lambda r: r["dev"]["loss"])
        summary = {"run_id": run_id, "model_id": loop.model_id, "feature_set": feature_set, "feature_dim": feature_dim,
                   "code_version": loop.code_version, "config": asdict(cfg), "model_config": model.to_dict(),
                   "seeds": runs, "best": best_run["checkpoint"], "dev_mean_std": aggregate([r["dev"] for r in runs])}
        storage.write_json(out.join("summary.json").uri, json_safe(summary))
        write_multiseed_meta(out.uri, CheckpointMeta(
            checkpoints=[r["checkpoint"] for r in runs], best=best_run["checkpoint"], feature_set=feature_set,
            feature_dim=feature_dim, model_id=loop.model_id, model_version=best_run["model_version"], run_id=run_id))
        record_train_run(cfg, run_id, started, "succeeded", train_table, n_unlabelled, len(runs),
                         best_run["model_version"])
        return summary
    except BaseException:
        record_train_run(cfg, run_id, started, "failed", train_table, n_unlabelled, len(runs), None)
        raise


def report(cfg: TrainConfig, summary: dict) -> None:
    for k, v in summary["dev_mean_std"].items():
        print(f"dev {k}: {v['mean']:.4f} ± {v['std']:.4f} over {v['n']} seed(s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    return _wiring.run_job("train", TrainConfig, run, report, argv)


if __name__ == "__main__":
    _wiring.exit_with(main)
