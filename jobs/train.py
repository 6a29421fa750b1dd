"""Train: utterances -> CM-BERT checkpoints (Ray Train, DDP), one per seed, plus a summary over seeds.

    python jobs/train.py --train URI --dev URI --output DIR_OR_S3_URI [--encoder mpnet|minilm|PATH] [--fusion cmbert|none]
        [--cls-audio mean|zero] [--audio-values|--no-audio-values] [--seeds N] [--epochs 3] [--workers N] [--gpu]
        [--precision fp32|bf16] [--batch-size 24] [--max-len 50] [--lr 2e-5] [--fusion-lr 1e-3] [--label-column label]

Defaults train our hearing variant (audio at [CLS] and in the fusion attention's values); the paper's CM-BERT,
whose score cannot depend on the audio, is ``--cls-audio zero --no-audio-values --fusion-lr 0.01``.

OUTPUT gets seed-N/ (the epoch with the lowest dev loss of each seed), meta.json (names the best seed, so
OUTPUT itself loads with cmbert.checkpoint.load_checkpoint), summary.json (dev metrics per seed, mean and
std), runs/ (one RUNS_SCHEMA row) and _ray/ (Ray Train's per-epoch checkpoints: a killed run started again
with the same OUTPUT resumes each seed from its last finished epoch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

try:
    import cmbert  # noqa: F401
except ImportError:  # run from a Ray working dir without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cmbert import storage
from cmbert.checkpoint import META, publish_dir, save_checkpoint, write_multiseed_meta
from cmbert.cli import parse_config
from cmbert.collate import collate, predict_rows, read_utterances
from cmbert.metrics import aggregate, json_safe, regression_metrics
from cmbert.encoders import DEFAULT_ENCODER, MINILM, MPNET, EncoderMissing, resolve_encoder
from cmbert.model import CMBertConfig, build_model, load_tokenizer
from cmbert.runinfo import code_version, new_run_id, utc_now, write_run_row


TRAIN_STATE_FILES = ("optimizer.safetensors", "train_state.json")  # in Ray's epoch checkpoints, not published


@dataclass
class TrainConfig:
    """Utterances -> CM-BERT checkpoints (paper defaults: batch 24, max len 50, 3 epochs, Adam, MSE)."""

    train: str = field(metadata={"help": "utterances dataset (folder or s3:// URI) to train on"})
    dev: str = field(metadata={"help": "utterances dataset for model selection (lowest dev loss)"})
    output: str = field(metadata={"help": "output folder or s3:// URI"})
    encoder: str = field(default=DEFAULT_ENCODER, metadata={
        "help": "mpnet = all-mpnet-base-v2 (12 layers, hidden 768; `make mpnet` installs it), minilm = the bundled "
                "all-MiniLM-L6-v2 (6 layers, hidden 384: small machines), or a model directory"})
    fusion: str = field(default="cmbert", metadata={"choices": ("cmbert", "none"), "help": "none = T-BERT"})
    # Defaults: our hearing variant. The paper's model: --cls-audio zero --no-audio-values --fusion-lr 0.01.
    cls_audio: str = field(default="mean", metadata={"choices": ("zero", "mean"),
                                                     "help": "audio vector at [CLS]: zero = paper, mean = of its words"})
    audio_values: bool = field(default=True, metadata={"help": "ours: the fusion attention's values carry the "
                                                               "word audio too, so the voice reaches the score"})
    seeds: int = field(default=1, metadata={"help": "train this many seeds (1, 11, 111, ... as the authors)"})
    epochs: int = field(default=3, metadata={"help": "passes over the training set"})
    workers: int = field(default=1, metadata={"help": "Ray Train DDP workers"})
    gpu: bool = field(default=False, metadata={"help": "one GPU per worker (NCCL); else CPU (gloo)"})
    batch_size: int = field(default=24, metadata={"help": "global batch size, split across workers"})
    max_len: int = field(default=50, metadata={"help": "word-pieces per utterance, [CLS] and [SEP] included"})
    precision: str = field(default="fp32", metadata={"choices": ("fp32", "bf16"),
                                                     "help": "bf16: autocast forward and loss (GPUs)"})
    lr: float = field(default=2e-5, metadata={"help": "Adam learning rate of the encoder and the head"})
    fusion_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the masked multimodal attention "
                                                            "(paper: 0.01, which diverges here: see README)"})
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of the regression head "
                                                                 "(default: --lr, as the paper's BERT rate)"})
    label_column: str = field(default="label", metadata={"help": "column (or key of `extra`) with the target"})
    proj_dim: int = field(default=30, metadata={"help": "projection size of the masked multimodal attention"})
    audio_norm: bool = field(default=True, metadata={"help": "standardise word audio with the training set's "
                                                             "per-feature mean and std (kept in the checkpoint)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after the fusion and before the head"})
    attention_dropout: float = field(default=0.3, metadata={"help": "dropout on W_m"})
    threads_per_worker: int | None = field(default=None, metadata={"help": "torch threads (default CPUs/workers)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs Ray reserves per training worker"})
    max_failures: int = field(default=0, metadata={"help": "Ray Train restarts from the last checkpoint this often"})
    model_id: str | None = field(default=None, metadata={"help": "name recorded in meta.json and score rows"})


def seed_list(n: int) -> list[int]:
    """The authors' seeds 1, 11, 111, 1111, 11111, continued the same way."""
    return [int("1" * (i + 1)) for i in range(n)]


# ---------------------------------------------------------------- what train_func needs from Ray


class RaySession:
    """Rank, data, device, DDP, checkpoints and reporting from Ray Train (tests pass a local stand-in)."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()

    def rows(self, name: str) -> list[dict]:
        import ray.data
        import ray.train

        shard = ray.train.get_dataset_shard(name)
        ray.data.DataContext.get_current().enable_progress_bars = False
        return [r for b in shard.iter_batches(batch_size=4096, batch_format="pyarrow") for r in b.to_pylist()]

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP when there are several workers

    @contextlib.contextmanager
    def latest_checkpoint(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as path:
            yield path

    def report(self, metrics: dict, checkpoint_dir: str | None, name: str) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt else None)


# ---------------------------------------------------------------- the training loop


def train_func(loop_config: dict, session=None) -> None:
    """One seed: forward, MSE loss, backward, Adam step; dev loss and metrics and a checkpoint every epoch."""
    session = session or RaySession()
    cfg = TrainConfig(**loop_config["train"])
    seed, audio_dim = loop_config["seed"], loop_config["audio_dim"]
    rank, world = session.rank, session.world_size
    torch.set_num_threads(loop_config["threads"])
    torch.manual_seed(seed)  # the same initial weights on every worker (DDP also broadcasts rank 0's)
    np.random.seed(seed)

    model_cfg = CMBertConfig.from_dict(loop_config["model"])
    model = build_model(model_cfg)  # pretrained encoder; fills model_cfg.encoder_config
    tokenizer = load_tokenizer(model_cfg)
    device = session.device()
    model.to(device)
    groups = model.param_groups()
    optimizer = torch.optim.Adam([g for g in (
        {"params": groups["encoder"], "lr": cfg.lr},
        {"params": groups["head"], "lr": cfg.head_lr if cfg.head_lr is not None else cfg.lr},
        {"params": groups["fusion"], "lr": cfg.fusion_lr},
    ) if g["params"]])

    start_epoch = 0
    with session.latest_checkpoint() as path:
        if path is not None:
            start_epoch = load_train_state(path, model, optimizer) + 1
    ddp_model = session.prepare(model)

    # Every worker holds the whole (small) training set in one fixed order; each epoch's permutation depends
    # only on (seed, epoch), and worker r takes every world-th row of each global batch: the same global
    # batches whatever the number of workers, and a resumed run replays exactly what it would have done.
    train_rows = sorted(session.rows("train"), key=lambda r: r["utterance_id"])
    dev_rows = sorted(session.rows("dev"), key=lambda r: r["utterance_id"]) if rank == 0 else []
    train_rows = [r for r in train_rows if _finite(r["label"])]

    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(seed * 1000 + epoch * 10 + rank)  # dropout masks, reproducible per epoch
        perm = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        model.train()
        t0, loss_sum, n_seen = time.perf_counter(), 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            global_batch = perm[start:start + cfg.batch_size]
            if len(global_batch) < world:  # a worker would get no rows; DDP needs every worker to step
                break
            rows = [train_rows[i] for i in global_batch[rank::world]]
            batch = {k: v.to(device) for k, v in collate(rows, tokenizer, cfg.max_len, audio_dim).items()}

            with torch.autocast(device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
                out = ddp_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                audio=batch["audio"])
            loss = F.mse_loss(out.score.float(), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over workers here
            optimizer.step()

            loss_sum += loss.item() * len(rows)
            n_seen += len(rows)

        metrics = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1), "train_rows_per_s":
                   n_seen * world / (time.perf_counter() - t0)}
        checkpoint_dir = None
        if rank == 0:
            preds, _ = predict_rows(model, tokenizer, dev_rows, cfg.max_len, audio_dim, device=device)
            labels = np.array([float(r["label"]) if _finite(r["label"]) else math.nan for r in dev_rows])
            ok = np.isfinite(labels)
            metrics["dev_loss"] = float(np.mean((preds[ok] - labels[ok]) ** 2)) if ok.any() else math.nan
            metrics |= {f"dev_{k}": v for k, v in regression_metrics(preds, labels).items()}
            checkpoint_dir = tempfile.mkdtemp(prefix="cmbert-epoch-")
            save_checkpoint(model, tokenizer, model_cfg, checkpoint_dir, {
                "feature_set": loop_config["feature_set"], "feature_dim": loop_config["feature_dim"],
                "model_id": loop_config["model_id"], "seed": seed, "epoch": epoch,
                "missing_audio": loop_config["missing_audio"],  # "zeros": trained on audio-absent rows as zeros
                "metrics": json_safe({k: v for k, v in metrics.items() if k.startswith("dev_")}),
                "run_id": loop_config["run_id"], "code_version": loop_config["code_version"],
                "train_config": loop_config["train"],
            })
            save_train_state(checkpoint_dir, model, optimizer, epoch)
        session.report(metrics, checkpoint_dir, name=f"epoch-{epoch:03d}")
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def save_train_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Adam's moments as safetensors (keyed by parameter name) and the epoch, beside the checkpoint's weights."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, os.path.join(path, TRAIN_STATE_FILES[0]))
    with open(os.path.join(path, TRAIN_STATE_FILES[1]), "w") as f:
        json.dump({"epoch": epoch}, f)


def load_train_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore weights and Adam's state from an epoch checkpoint; returns the epoch it finished."""
    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=True)
    params = dict(model.named_parameters())
    for key, value in load_file(os.path.join(path, TRAIN_STATE_FILES[0])).items():
        name, slot = key.split("::")
        p = params[name]
        optimizer.state[p][slot] = value if slot == "step" else value.to(p.device)
    with open(os.path.join(path, TRAIN_STATE_FILES[1])) as f:
        return int(json.load(f)["epoch"])


# ---------------------------------------------------------------- the driver


def audio_stats(table: pa.Table, feature_dim: int) -> tuple[list[float] | None, list[float] | None]:
    """Per-feature mean and std over every word vector of the training rows (None when there is no audio)."""
    if not feature_dim:
        return None, None
    features = pc.list_flatten(pc.struct_field(pc.list_flatten(table.column("words")), "features"))
    values = features.to_numpy(zero_copy_only=False).astype(np.float64)
    if values.size == 0 or values.size % feature_dim:
        return None, None
    vectors = values.reshape(-1, feature_dim)  # (words, Da)
    return vectors.mean(axis=0).tolist(), vectors.std(axis=0).tolist()


def feature_info(*tables: pa.Table) -> tuple[str, int]:
    """(feature_set, feature_dim) shared by every row with audio; ("none", 0) for text-only data."""
    found = set()
    for t in tables:
        audio = t.filter(t.column("audio_present"))
        found |= set(zip(audio.column("feature_set").to_pylist(), audio.column("feature_dim").to_pylist()))
    if len(found) > 1:
        raise ValueError(f"the utterances mix feature sets {sorted(found)}: train on one feature set")
    return found.pop() if found else ("none", 0)


def default_model_id(cfg: TrainConfig) -> str:
    names = {MINILM: "minilm-l6", MPNET: "mpnet-base"}
    encoder = names.get(cfg.encoder) or os.path.basename(cfg.encoder.rstrip("/")) or cfg.encoder
    fusion = f"-{cfg.cls_audio}" + ("-values" if cfg.audio_values else "") if cfg.fusion == "cmbert" else ""
    return f"cmbert-{cfg.fusion}{fusion}-{encoder}"


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(TrainConfig, argv)
    try:  # before any work: a missing encoder is one line here, not a traceback inside every Ray worker
        resolve_encoder(cfg.encoder)
    except EncoderMissing as exc:
        raise SystemExit(str(exc)) from None
    run_id, started = new_run_id("train"), utc_now()
    out = storage.locate(cfg.output)
    train_table, n_unlabelled = read_utterances(cfg.train, cfg.label_column)
    dev_table, _ = read_utterances(cfg.dev, cfg.label_column)
    if train_table.num_rows == 0:
        raise SystemExit(f"no labelled utterances in {cfg.train}")
    feature_set, feature_dim = feature_info(train_table, dev_table)
    # Audio-absent rows train with zero audio; a model that saw such rows may score them the same way.
    n_no_audio = train_table.num_rows - pc.sum(train_table.column("audio_present")).as_py()
    missing_audio = "zeros" if n_no_audio and feature_dim else "refuse"
    mean, std = audio_stats(train_table, feature_dim) if cfg.audio_norm else (None, None)
    model_cfg = CMBertConfig(encoder=cfg.encoder, fusion=cfg.fusion, cls_audio=cfg.cls_audio,
                             audio_values=cfg.audio_values,
                             audio_dim=max(feature_dim, 1), proj_dim=cfg.proj_dim, dropout=cfg.dropout,
                             attention_dropout=cfg.attention_dropout, max_len=cfg.max_len,
                             audio_mean=mean, audio_std=std)
    model_id = cfg.model_id or default_model_id(cfg)
    if cfg.batch_size % cfg.workers:
        raise SystemExit(f"--batch-size {cfg.batch_size} must be a multiple of --workers {cfg.workers}")

    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from cmbert.raysetup import cluster_cpus, init_ray, torch_config

    init_ray()
    storage.require_shared(cfg.output)  # Ray Train's storage path: every node must see a local one (or use S3)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if train_func.__module__ != "__main__":  # imported (tests): ship this module's code to the workers by value
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[train_func.__module__])
    threads = cfg.threads_per_worker or max(1, int(cluster_cpus()) // cfg.workers)
    datasets = {"train": ray.data.from_arrow(train_table), "dev": ray.data.from_arrow(dev_table)}
    ray_storage = out.join("_ray")
    summary_runs = []
    try:
        for seed in seed_list(cfg.seeds):
            trainer = TorchTrainer(
                train_func,
                torch_config=torch_config(),
                train_loop_config={"train": asdict(cfg), "seed": seed, "model": model_cfg.to_dict(),
                                   "audio_dim": model_cfg.audio_dim, "feature_set": feature_set,
                                   "feature_dim": feature_dim, "model_id": model_id, "threads": threads,
                                   "run_id": run_id, "code_version": code_version(),
                                   "missing_audio": missing_audio},
                scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                                       resources_per_worker={"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.gpu else {})),
                run_config=ray.train.RunConfig(
                    name=f"seed-{seed}", storage_path=ray_storage.path,
                    storage_filesystem=out.fs if out.is_s3 else None,
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="dev_loss",
                                                                 checkpoint_score_order="min"),
                    failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
                datasets=datasets,
                dataset_config=ray.train.DataConfig(datasets_to_split=[]),  # every worker sees all rows (see train_func)
            )
            result = trainer.fit()
            scored = [(c, m) for c, m in (result.best_checkpoints or []) if _finite(m.get("dev_loss"))]
            if not scored:
                raise RuntimeError(f"seed {seed}: training reported no checkpoint with a finite dev loss")
            best_ckpt, best = min(scored, key=lambda cm: cm[1]["dev_loss"])
            publish_dir(best_ckpt.filesystem, best_ckpt.path, out.join(f"seed-{seed}").uri, skip=TRAIN_STATE_FILES)
            with best_ckpt.filesystem.open_input_stream(f"{best_ckpt.path}/{META}") as f:
                seed_meta = json.loads(f.read())
            summary_runs.append({"seed": seed, "checkpoint": f"seed-{seed}", "best_epoch": best["epoch"],
                                 "model_version": seed_meta["model_version"],
                                 "train_rows_per_s": best["train_rows_per_s"],
                                 # the last epoch's (past the first steps' warm-up): what bench/bench_train.py quotes
                                 "train_rows_per_s_last_epoch": (result.metrics or {}).get("train_rows_per_s"),
                                 "dev": {k[4:]: v for k, v in best.items() if k.startswith("dev_")}})
            print(f"seed {seed}: best epoch {best['epoch']} dev_loss {best['dev_loss']:.4f}", flush=True)

        best_run = min(summary_runs, key=lambda r: r["dev"]["loss"])
        summary = {"run_id": run_id, "model_id": model_id, "feature_set": feature_set, "feature_dim": feature_dim,
                   "code_version": code_version(), "config": asdict(cfg), "model_config": model_cfg.to_dict(),
                   "seeds": summary_runs, "best": best_run["checkpoint"],
                   "dev_mean_std": aggregate([r["dev"] for r in summary_runs])}
        _write_json(out.join("summary.json"), json_safe(summary))
        write_multiseed_meta(out.uri, {"checkpoints": [r["checkpoint"] for r in summary_runs],
                                       "best": best_run["checkpoint"], "feature_set": feature_set,
                                       "feature_dim": feature_dim, "model_id": model_id,
                                       "model_version": best_run["model_version"], "run_id": run_id})
        for k, v in summary["dev_mean_std"].items():
            print(f"dev {k}: {v['mean']:.4f} ± {v['std']:.4f} over {v['n']} seed(s)", flush=True)
        _write_run_row(cfg, run_id, started, "succeeded", train_table, n_unlabelled, len(summary_runs),
                       best_run["model_version"])
        return summary
    except BaseException:
        _write_run_row(cfg, run_id, started, "failed", train_table, n_unlabelled, len(summary_runs), None)
        raise


def _write_json(loc: storage.Location, data: dict) -> None:
    try:
        with loc.fs.open_output_stream(loc.path) as f:
            f.write(json.dumps(data, indent=2, sort_keys=True, default=str).encode())
    except OSError as exc:
        raise storage.explain(exc, loc.uri, "write") from None


def _write_run_row(cfg, run_id, started, status, train_table, n_unlabelled, n_output, model_version) -> None:
    spans = [(e - s) for s, e in zip(train_table.column("start").to_pylist(), train_table.column("end").to_pylist())
             if s is not None and e is not None] if "start" in train_table.column_names else []
    try:
        write_run_row(cfg.output, job="train", status=status, run_id=run_id, started=started, config=cfg,
                      input=cfg.train, n_input=train_table.num_rows + n_unlabelled, n_output=n_output,
                      n_rejected=n_unlabelled, n_skipped=0, audio_seconds=sum(spans), model_version=model_version)
    except Exception as exc:  # never hide the training error behind a bookkeeping one
        print(f"warning: could not write the run row: {exc}", file=sys.stderr)


if __name__ == "__main__":
    from cmbert.console import quiet_console

    quiet_console()
    main()
