"""Early stopping on dev loss: the rule over a dev history, then train_func with the tiny model under the session
stand-in (a seed stops at best + patience, patience 0 runs every epoch, a resume carries the count on, the old
train-state file starts it fresh), and two DDP ranks (two processes, gloo) leaving the loop at the same epoch.

The loop runs at learning rate 0 where a test needs the dev loss under its control: the weights never move, so
every epoch's dev loss equals epoch 0's (never strictly lower) and the best epoch is 0."""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields

import pytest

from cmbert.checkpoint import TRAIN_STATE_FILES
from cmbert.testing import LocalSession, tiny_loop_config, tiny_rows
from cmbert.training import TrainLoopConfig, epochs_without_improvement, lr_factor, stops_early, train_func


def losses(*values):
    return [{"epoch": i, "dev_loss": v} for i, v in enumerate(values)]


def test_the_rule_counts_epochs_since_a_strictly_lower_finite_dev_loss():
    assert epochs_without_improvement([]) == 0
    assert epochs_without_improvement(losses(3.0, 2.0, 1.0)) == 0
    assert epochs_without_improvement(losses(3.0, 2.0, 2.5, 2.0)) == 2  # equal is no improvement
    assert epochs_without_improvement(losses(3.0, 2.0, 2.5, 1.9)) == 0
    assert epochs_without_improvement(losses(None, 2.0, math.nan, 2.1)) == 2  # None: a non-finite loss (JSON)
    assert epochs_without_improvement(losses(None, None)) == 2
    assert not stops_early(losses(3.0, 2.0, 2.5), 2) and stops_early(losses(3.0, 2.0, 2.5, 2.2), 2)
    assert not stops_early(losses(1.0, 2.0, 3.0, 4.0, 5.0), 0)  # 0: never


@pytest.fixture(scope="module")
def data():
    return {"train": tiny_rows(16, seed=0), "dev": tiny_rows(8, seed=1)}


# every learning-rate group of the loop at 0 (derived from the config, so a new group cannot be left moving)
FROZEN = {f.name: 0.0 for f in fields(TrainLoopConfig) if f.name == "lr" or f.name.endswith("_lr")}


def run(data, epochs, patience, resume_from=None, lr=0.0) -> LocalSession:
    config = tiny_loop_config(epochs) | {"patience": patience}
    if lr == 0.0:
        config |= FROZEN
    session = LocalSession(data, resume_from)
    train_func(config, session=session)
    return session


def epochs(session) -> list[int]:
    return [m["epoch"] for m, _ in session.reports]


@pytest.fixture(scope="module")
def straight(data):
    """Uninterrupted: best epoch 0, then 3 epochs without improvement: stops after epoch 3 of at most 10."""
    return run(data, epochs=10, patience=3)


def test_a_seed_stops_at_best_plus_patience(straight):
    assert epochs(straight) == [0, 1, 2, 3]
    last = straight.reports[-1][0]
    assert [m["early_stop"] for m, _ in straight.reports] == [False, False, False, True]
    assert [h["epoch"] for h in last["history"]] == [0, 1, 2, 3]
    assert {"dev_loss", "dev_non0_acc2", "train_loss"} <= set(last["history"][0])
    assert len({h["dev_loss"] for h in last["history"]}) == 1  # learning rate 0: one dev loss throughout


def test_patience_0_runs_every_epoch(data):
    session = run(data, epochs=3, patience=0)
    assert epochs(session) == [0, 1, 2] and not any(m["early_stop"] for m, _ in session.reports)
    # the last allowed epoch is no early stop, even where the count reaches the patience there
    assert not run(data, epochs=2, patience=1).reports[-1][0]["early_stop"]


def test_a_resume_mid_patience_stops_where_the_uninterrupted_run_stopped(data, straight, tmp_path):
    after_1 = straight.reports[1][1]  # killed after epoch 1: one epoch without improvement counted
    resumed = run(data, epochs=10, patience=3, resume_from=after_1)
    assert epochs(resumed) == [2, 3]
    assert resumed.reports[-1][0]["history"] == straight.reports[-1][0]["history"]
    assert resumed.reports[-1][0]["early_stop"]
    # killed after the epoch that decided to stop (before the run ended): the rerun trains no further epoch
    assert epochs(run(data, epochs=10, patience=3, resume_from=straight.reports[-1][1])) == []

    # a train state written before early stopping (the epoch only): the count starts fresh at the next epoch
    import shutil

    old = str(tmp_path / "old-state")
    shutil.copytree(after_1, old)
    with open(os.path.join(old, TRAIN_STATE_FILES[1]), "w") as f:
        json.dump({"epoch": 1}, f)
    assert epochs(run(data, epochs=10, patience=3, resume_from=old)) == [2, 3, 4, 5]


# ---------------------------------------------------------------- two DDP ranks


def _rank_main(rank: int, init_file: str, out: str, data: dict, config: dict) -> None:
    """One of two processes: rank ``rank`` of a gloo group, train_func under the stand-in, its epochs to ``out``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        session = LocalSession(data, keep_checkpoints=False, rank=rank, world_size=2)
        train_func(config, session=session)
        with open(f"{out}.{rank}", "w") as f:
            json.dump([m["epoch"] for m, _ in session.reports], f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_stop_at_the_epoch_rank_0_decides(data, tmp_path):
    """Only rank 0 sees the dev loss; a rank that went on would wait in DDP's all-reduce for ever, so the
    processes get a generous deadline and a rank still alive after it fails the test."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = str(tmp_path / "epochs")
    config = tiny_loop_config(6) | {"patience": 1} | FROZEN  # one tiny BERT
    procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "pg"), out, data, config)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    alive = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not alive, f"rank(s) {alive} still running: a rank did not leave the loop"
    assert [p.exitcode for p in procs] == [0, 0]
    with open(f"{out}.0") as f0, open(f"{out}.1") as f1:
        assert json.load(f0) == json.load(f1) == [0, 1]  # patience 1: epoch 1 brought no lower dev loss


@pytest.mark.parametrize("loss,metric", [("mse", None), ("l1", "dev_mae")])
def test_the_dev_loss_is_the_training_loss(data, loss, metric):
    """--loss picks the training loss and the dev loss that early stopping compares: with l1 it is the dev MAE
    the metrics report; mse is the mean squared error (larger than the MAE squared unless all errors are equal)."""
    session = LocalSession(data)
    train_func(tiny_loop_config(1) | {"loss": loss, "patience": 0}, session=session)
    m = session.reports[-1][0]
    if metric:
        assert m["dev_loss"] == pytest.approx(m[metric], rel=1e-9)
    else:
        assert m["dev_loss"] >= m["dev_mae"] ** 2 and m["dev_loss"] != pytest.approx(m["dev_mae"])


def test_a_resumed_run_follows_the_lr_schedule_where_the_uninterrupted_run_was(data):
    """The rate is a function of the global step, so a run resumed after epoch 0 trains epochs 1-2 exactly as
    the straight run did; and the linear schedule is in effect (its losses are not the constant rate's)."""

    def linear(resume_from=None) -> LocalSession:
        session = LocalSession(data, resume_from)
        train_func(tiny_loop_config(3) | {"patience": 0, "lr_schedule": "linear", "lr": 1e-3}, session=session)
        return session

    straight_linear = linear()
    resumed = linear(resume_from=straight_linear.reports[0][1])
    train_losses = [m["train_loss"] for m, _ in straight_linear.reports]
    assert [m["train_loss"] for m, _ in resumed.reports] == train_losses[1:]
    steps = 2  # 16 rows in global batches of 8
    assert [m["lr_factor"] for m, _ in straight_linear.reports] == [
        lr_factor("linear", (epoch + 1) * steps - 1, 3 * steps) for epoch in range(3)]
    assert straight_linear.reports[-1][0]["lr_factor"] < straight_linear.reports[0][0]["lr_factor"]
    constant = LocalSession(data)
    train_func(tiny_loop_config(3) | {"patience": 0, "lr": 1e-3}, session=constant)
    assert [m["train_loss"] for m, _ in constant.reports] != train_losses
