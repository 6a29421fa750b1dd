"""Training CM-BERT: the loop's config, what the loop needs from Ray Train, the loop itself, data statistics.

Read top to bottom: ``TrainLoopConfig`` (one seed's run, as the job builds it and Ray ships it to every worker),
the ``Session`` protocol (rank, rows, device, DDP, a broadcast, checkpoints, reports: ``RaySession`` under Ray
Train, a local stand-in in tests and benches), the early-stopping rule, ``train_func`` (forward, L1 or MSE loss,
backward, Adam step, written out), then the audio statistics and names the job derives from the data. No argparse
and no Ray at import time: jobs/train.py is the wiring. Under ``ray job submit --working-dir .`` the workers
import this module from the working dir.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import ContextManager, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from cmbert import storage
from cmbert.checkpoint import CheckpointMeta, TrainState, load_train_state, save_checkpoint, save_train_state
from cmbert.collate import UtteranceInput, collate, predict_rows
from cmbert.encoders import MINILM, MPNET
from cmbert.errors import ConfigError
from cmbert.metrics import json_safe, regression_metrics
from cmbert.model import CMBertConfig, build_model, load_tokenizer

NO_AUDIO = "none"  # feature_set of text-only data
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}  # the one place a loss name becomes a function (train and dev)
WARMUP = 0.1  # share of the planned steps the linear schedule warms up over (the paper's BertAdam: 10%)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The multiplier of every group's base learning rate at optimizer step ``step`` (0-based) of
    ``total_steps`` planned: a pure function of the step, so a resumed run needs no scheduler state."""
    if schedule == "constant":
        return 1.0
    if schedule != "linear":
        raise ValueError(f"unknown lr schedule {schedule!r} (constant | linear)")
    warmup = max(1, round(WARMUP * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


@dataclass
class TrainLoopConfig:
    """One seed's training run: the model to build and the loop's options (defaults: the shipped ones, which
    jobs/train.py's flags take from here), plus what each checkpoint's meta.json records."""

    model: CMBertConfig = field(default_factory=CMBertConfig)  # audio_dim, max_len and audio statistics set
    seed: int = 1
    epochs: int = 12  # at most (paper: 3); early stopping usually ends a seed sooner
    patience: int = 3  # stop after this many epochs without a lower dev loss; 0: never early (paper: no early stop)
    batch_size: int = 24  # global (paper: 24), split across workers
    lr: float = 2e-5  # Adam, encoder and head
    fusion_lr: float = 1e-3  # Adam, masked multimodal attention (paper: 0.01, which diverges here: see README)
    head_lr: float | None = None  # None: lr (the paper's BERT rate)
    # the fusion's audio-only parameters (CMBert.AUDIO_PARAMS): RAVDESS dev, 5 paired seeds, non0 Acc2 0.844 vs 0.834
    # at fusion_lr (README); text-only rows give them zero gradient, so MOSI is the same at any rate
    audio_lr: float = 3e-3
    # constant | linear: every group's lr rises from 0 over the first WARMUP of the steps `epochs` allow, then
    # falls linearly to 0 at the last of them (the paper's BertAdam schedule); early stopping may end sooner
    lr_schedule: str = "constant"
    # l1 | mse (paper): the training loss, and the dev loss that early stopping and selection compare. L1 on dev
    # (README, Results): MOSI MAE -0.04 and Acc7 +2 points over MSE on the same seeds, RAVDESS the same within noise
    loss: str = "l1"
    precision: str = "fp32"  # fp32 | bf16 (autocast forward and loss)
    threads: int = 1  # torch threads per worker
    feature_set: str = NO_AUDIO
    feature_dim: int = 0
    missing_audio: str = "refuse"  # "zeros": the training set had audio-absent rows, trained on as zero audio
    model_id: str = "cmbert"
    run_id: str = ""
    code_version: str = ""
    train_config: dict = field(default_factory=dict)  # the job's resolved options, recorded in meta.json

    def to_dict(self) -> dict:
        """What Ray Train hands to ``train_func`` on each worker."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainLoopConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        model = CMBertConfig.from_dict(values["model"]) if "model" in values else CMBertConfig()
        return cls(**values | {"model": model})


# ---------------------------------------------------------------- what train_func needs from Ray


class Session(Protocol):
    """train_func's view of the cluster: RaySession under Ray Train; tests and benches pass a local stand-in."""

    rank: int
    world_size: int

    def rows(self, name: str) -> list[dict]: ...  # every row of dataset ``name`` ("train", "dev")

    def device(self) -> torch.device: ...

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module: ...  # DDP-wrapped when there are workers

    def broadcast(self, value: int) -> int: ...  # rank 0's value on every rank; every rank calls it (a collective)

    def latest_checkpoint(self) -> ContextManager[str | None]: ...  # a local folder to resume from, or None

    def report(self, metrics: dict, checkpoint_dir: str | None, name: str) -> None: ...


class RaySession:
    """Rank, data, device, DDP, checkpoints and reporting from Ray Train."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()

    def rows(self, name: str) -> list[dict]:
        import ray.train

        from cmbert.raysetup import data_context

        shard = ray.train.get_dataset_shard(name)
        data_context()  # a Ray Train worker: the jobs' Ray Data settings here too
        return [r for b in shard.iter_batches(batch_size=4096, batch_format="pyarrow") for r in b.to_pylist()]

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP when there are several workers

    def broadcast(self, value: int) -> int:
        return broadcast_from_rank0(value, self.device())

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


def broadcast_from_rank0(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank of the torch.distributed group (DDP's: Ray Train sets it up, gloo or NCCL,
    whose tensors live on ``device``); ``value`` itself without a group of several ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


# ---------------------------------------------------------------- early stopping


def epochs_without_improvement(history: list[dict]) -> int:
    """Epochs since the dev loss was last lower (strictly, and finite) than every earlier one; ``history`` is
    TrainState.history (a non-finite dev loss is None there). All of them when none was finite."""
    best, waited = math.inf, 0
    for entry in history:
        loss = entry.get("dev_loss")
        if loss is not None and math.isfinite(loss) and loss < best:
            best, waited = loss, 0
        else:
            waited += 1
    return waited


def stops_early(history: list[dict], patience: int) -> bool:
    """A seed stops once ``patience`` epochs in a row brought no lower dev loss (never when ``patience`` is 0);
    the published checkpoint is still the lowest-dev-loss epoch (publish_seed)."""
    return patience > 0 and epochs_without_improvement(history) >= patience


# ---------------------------------------------------------------- the training loop


def make_optimizer(model: torch.nn.Module, cfg: TrainLoopConfig) -> torch.optim.Adam:
    """Adam over the model's learning-rate groups (CMBert.param_groups) at ``cfg``'s rates; empty groups left out."""
    groups = model.param_groups()
    return torch.optim.Adam([g for g in (
        {"params": groups["encoder"], "lr": cfg.lr},
        {"params": groups["head"], "lr": cfg.head_lr if cfg.head_lr is not None else cfg.lr},
        {"params": groups["fusion"], "lr": cfg.fusion_lr},
        {"params": groups["audio"], "lr": cfg.audio_lr},
    ) if g["params"]])


def train_func(config: dict, session: Session | None = None) -> None:
    """One seed: forward, loss (``cfg.loss``: L1 or MSE), backward, Adam step (at ``cfg.lr_schedule``'s rate for
    the step); dev loss and metrics and a checkpoint every epoch, until ``epochs`` or early stopping
    (``patience``).

    ``config`` is ``TrainLoopConfig.to_dict()`` (what Ray Train ships to the workers)."""
    cfg = TrainLoopConfig.from_dict(config)
    session = session or RaySession()
    seed, rank, world = cfg.seed, session.rank, session.world_size
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)  # the same initial weights on every worker (DDP also broadcasts rank 0's)
    np.random.seed(seed)

    model = build_model(cfg.model)  # pretrained encoder
    model_cfg = model.config  # cfg.model with the encoder's config filled in: what config.json records
    audio_dim, max_len = model_cfg.audio_dim, model_cfg.max_len
    tokenizer = load_tokenizer(model_cfg)
    device = session.device()
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    start_epoch, history = 0, []  # history: one entry per epoch (rank 0's dev metrics), kept in the train state
    with session.latest_checkpoint() as path:
        if path is not None:
            state = load_train_state(path, model, optimizer)
            start_epoch, history = state.epoch + 1, state.history
    ddp_model = session.prepare(model)

    # Every worker holds the whole (small) training set in one fixed order; each epoch's permutation depends
    # only on (seed, epoch), and worker r takes every world-th row of each global batch: the same global
    # batches whatever the number of workers, and a resumed run replays exactly what it would have done.
    train_rows = [UtteranceInput.from_row(r, audio_dim)
                  for r in sorted(session.rows("train"), key=lambda r: r["utterance_id"])]
    dev_rows = [UtteranceInput.from_row(r, audio_dim)
                for r in sorted(session.rows("dev"), key=lambda r: r["utterance_id"])] if rank == 0 else []
    train_rows = [u for u in train_rows if math.isfinite(u.label)]
    steps_per_epoch = len(range(0, len(train_rows) - world + 1, cfg.batch_size))  # global batches of >= world rows

    for epoch in range(start_epoch, cfg.epochs):
        # Only rank 0 knows the dev losses: its decision, shared, so that every rank leaves DDP at the same epoch
        # (a resumed run decides from the restored history, as the uninterrupted run did).
        if session.broadcast(int(stops_early(history, cfg.patience))):
            break
        torch.manual_seed(seed * 1000 + epoch * 10 + rank)  # dropout masks, reproducible per epoch
        perm = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        model.train()
        t0, loss_sum, n_seen = time.perf_counter(), 0.0, 0
        for step, start in enumerate(range(0, len(perm), cfg.batch_size), start=epoch * steps_per_epoch):
            global_batch = perm[start:start + cfg.batch_size]
            if len(global_batch) < world:  # a worker would get no rows; DDP needs every worker to step
                break
            factor = lr_factor(cfg.lr_schedule, step, cfg.epochs * steps_per_epoch)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            rows = [train_rows[i] for i in global_batch[rank::world]]
            batch = {k: v.to(device) for k, v in collate(rows, tokenizer, max_len, audio_dim).items()}

            with torch.autocast(device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
                out = ddp_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                audio=batch["audio"])
            loss = LOSSES[cfg.loss](out.score.float(), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over workers here
            optimizer.step()

            loss_sum += loss.item() * len(rows)
            n_seen += len(rows)

        metrics = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1), "train_rows_per_s":
                   n_seen * world / (time.perf_counter() - t0),
                   # the rate's multiplier at the epoch's last step (1 when constant)
                   "lr_factor": lr_factor(cfg.lr_schedule, (epoch + 1) * steps_per_epoch - 1,
                                          cfg.epochs * steps_per_epoch)}
        with storage.scratch_dir(prefix="cmbert-epoch-") as scratch:  # removed once reported (Ray copied it)
            checkpoint_dir = None
            if rank == 0:
                preds, _ = predict_rows(model, tokenizer, dev_rows, max_len, audio_dim, device=device)
                labels = np.array([u.label for u in dev_rows], dtype=np.float64)
                ok = np.isfinite(labels)
                metrics["dev_loss"] = (float(LOSSES[cfg.loss](torch.from_numpy(preds[ok].astype(np.float64)),
                                                                  torch.from_numpy(labels[ok])))
                                       if ok.any() else math.nan)
                metrics |= {f"dev_{k}": v for k, v in regression_metrics(preds, labels).items()}
                history.append(json_safe({k: v for k, v in metrics.items()
                                          if k in ("epoch", "train_loss") or k.startswith("dev_")}))
                # the whole history in every report: Ray Train's Result keeps the last report's (publish_seed)
                metrics |= {"history": list(history),
                            "early_stop": epoch + 1 < cfg.epochs and stops_early(history, cfg.patience)}
                checkpoint_dir = scratch
                save_checkpoint(model, tokenizer, model_cfg, checkpoint_dir, CheckpointMeta(
                    feature_set=cfg.feature_set, feature_dim=cfg.feature_dim, model_id=cfg.model_id, seed=seed,
                    epoch=epoch, missing_audio=cfg.missing_audio,
                    metrics=json_safe({k: v for k, v in metrics.items() if k.startswith("dev_")}),
                    run_id=cfg.run_id, code_version=cfg.code_version, train_config=cfg.train_config))
                save_train_state(checkpoint_dir, model, optimizer, TrainState(epoch, history))
            session.report(metrics, checkpoint_dir, name=f"epoch-{epoch:03d}")


# ---------------------------------------------------------------- what the job derives from the data


def seed_list(n: int) -> list[int]:
    """The authors' seeds 1, 11, 111, 1111, 11111, continued the same way."""
    return [int("1" * (i + 1)) for i in range(n)]


def chosen_seeds(n: int, values: str | None = None) -> list[int]:
    """The seeds a train run fits: ``values`` ("1111,11111") when given, else the first ``n`` of seed_list.
    A seed's training depends only on the seed, so seeds trained in separate runs add up to one study."""
    if not values:
        return seed_list(n)
    try:
        seeds = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--seed-values {values!r}: comma-separated integers, e.g. 1111,11111") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seed-values {values!r}: distinct non-negative integers, at least one")
    return seeds


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
    """(feature_set, feature_dim) shared by every row with audio; (NO_AUDIO, 0) for text-only data."""
    found = set()
    for t in tables:
        audio = t.filter(t.column("audio_present"))
        found |= set(zip(audio.column("feature_set").to_pylist(), audio.column("feature_dim").to_pylist()))
    if len(found) > 1:
        raise ValueError(f"the utterances mix feature sets {sorted(found)}: train on one feature set")
    return found.pop() if found else (NO_AUDIO, 0)


def default_model_id(model: CMBertConfig) -> str:
    """e.g. cmbert-cmbert-mean-values-mpnet-base: fusion, [CLS] audio, audio values, encoder."""
    names = {MINILM: "minilm-l6", MPNET: "mpnet-base"}
    encoder = names.get(model.encoder) or os.path.basename(model.encoder.rstrip("/")) or model.encoder
    fusion = (f"-{model.cls_audio}" + ("-values" if model.audio_values else "")) if model.fusion == "cmbert" else ""
    return f"cmbert-{model.fusion}{fusion}-{encoder}"


# ---------------------------------------------------------------- after a seed's fit (the driver)


def publish_seed(result, out: storage.Location, seed: int) -> dict:
    """The seed's epoch with the lowest finite dev loss (Ray Train's kept checkpoint) published as OUT/seed-N
    (without the optimizer state); its summary entry: the best epoch's dev metrics, how many epochs ran, whether
    early stopping ended the seed, and the per-epoch dev history (from the last report)."""
    from cmbert.checkpoint import TRAIN_STATE_FILES, publish_checkpoint, read_meta

    scored = [(c, m) for c, m in (result.best_checkpoints or []) if math.isfinite(m.get("dev_loss") or math.nan)]
    if not scored:
        raise RuntimeError(f"seed {seed}: training reported no checkpoint with a finite dev loss")
    ckpt, best = min(scored, key=lambda cm: cm[1]["dev_loss"])
    dest = out.join(f"seed-{seed}").uri
    publish_checkpoint(storage.Location(ckpt.filesystem, ckpt.path, ckpt.path), dest, skip=TRAIN_STATE_FILES)
    last = result.metrics or best
    return {"seed": seed, "checkpoint": f"seed-{seed}", "best_epoch": best["epoch"],
            "model_version": read_meta(dest).model_version, "train_rows_per_s": best["train_rows_per_s"],
            # the last epoch's (past the first steps' warm-up): what bench/bench_train.py quotes
            "train_rows_per_s_last_epoch": last.get("train_rows_per_s"),
            "epochs_run": last["epoch"] + 1, "stopped_early": bool(last.get("early_stop")),
            "history": last.get("history", []),
            "dev": {k[4:]: v for k, v in best.items() if k.startswith("dev_")}}


def record_train_run(cfg, run_id: str, started, status: str, train_table: pa.Table, n_unlabelled: int,
                     n_output: int, model_version: str | None) -> None:
    """The train job's RUNS_SCHEMA row; a failure to write it is a warning (never hides the training error)."""
    import sys

    from cmbert.runinfo import write_run_row

    spans = [(e - s) for s, e in zip(train_table.column("start").to_pylist(), train_table.column("end").to_pylist())
             if s is not None and e is not None] if "start" in train_table.column_names else []
    try:
        write_run_row(cfg.output, job="train", status=status, run_id=run_id, started=started, config=cfg,
                      input=cfg.train, n_input=train_table.num_rows + n_unlabelled, n_output=n_output,
                      n_rejected=n_unlabelled, n_skipped=0, audio_seconds=sum(spans), model_version=model_version)
    except Exception as exc:
        print(f"warning: could not write the run row: {exc}", file=sys.stderr)
