"""Training: a golden-loss smoke run of train_func without Ray (deterministic, resumable), then jobs/train.py
with Ray Train on a tiny generated utterance dataset, then jobs/evaluate.py on its output."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import jobs.evaluate
import jobs.train
from cmbert import storage
from cmbert.checkpoint import load_checkpoint
from cmbert.model import CMBertConfig
from cmbert.testing import LocalSession, tiny_encoder_dir, tiny_loop_config, tiny_rows, write_utterances
from cmbert.training import train_func

pytestmark = pytest.mark.slow

# train_loss (the default L1) per epoch of the smoke run below (torch 2.13 CPU); a change in the model, the loop,
# the loss, the data order or the seeding moves these (last moved by --audio-direct, on by default since 2026-12-06).
GOLDEN_TRAIN_LOSS = [1.6000088850657146, 1.5716413060824077]


@pytest.fixture(scope="module")
def data():
    return {"train": tiny_rows(48, seed=0), "dev": tiny_rows(16, seed=1)}


def run_local(data, epochs, resume_from=None) -> LocalSession:
    session = LocalSession(data, resume_from)
    train_func(tiny_loop_config(epochs), session=session)
    return session


def test_golden_loss_deterministic_and_resumable(data):
    a = run_local(data, epochs=2)
    b = run_local(data, epochs=2)
    losses = [m["train_loss"] for m, _ in a.reports]
    assert losses == [m["train_loss"] for m, _ in b.reports]  # bit-for-bit on CPU
    assert losses[1] < losses[0]
    if GOLDEN_TRAIN_LOSS[0] is not None:
        assert losses == pytest.approx(GOLDEN_TRAIN_LOSS, rel=1e-3)
    final = load_file(os.path.join(a.reports[-1][1], "model.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in load_file(os.path.join(b.reports[-1][1], "model.safetensors")).items())

    # "killed" after epoch 0, started again from that checkpoint: the same weights as the straight run
    first = run_local(data, epochs=1)
    resumed = run_local(data, epochs=2, resume_from=first.reports[0][1])
    assert [m["epoch"] for m, _ in resumed.reports] == [1]
    again = load_file(os.path.join(resumed.reports[-1][1], "model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert load_checkpoint(resumed.reports[-1][1]).meta.epoch == 1


@pytest.fixture(scope="module")
def ray_local():
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("utt")
    rows = tiny_rows(40, seed=0)
    rows[3]["label"] = None  # unlabelled rows are dropped, not trained on
    text_only = tiny_rows(4, seed=3, audio=False)  # rows without audio train with zero audio
    return (write_utterances(str(root / "train"), rows + text_only),
            write_utterances(str(root / "dev"), tiny_rows(12, seed=1)))


def test_train_job_with_ray_then_evaluate(ray_local, dataset, tmp_path):
    train, evaluate = jobs.train, jobs.evaluate
    out = str(tmp_path / "model")
    assert train.main(["--train", dataset[0], "--dev", dataset[1], "--output", out, "--encoder",
                       tiny_encoder_dir(), "--epochs", "1", "--workers", "1", "--batch-size", "8",
                       "--cls-audio", "mean"]) == 0
    summary = storage.read_json(os.path.join(out, "summary.json"))
    assert summary["feature_set"] == "gen" and summary["feature_dim"] == 4
    seed = summary["seeds"][0]  # how the seed's training went, from Ray Train's Result (the last report)
    assert seed["epochs_run"] == 1 and seed["stopped_early"] is False
    assert [h["epoch"] for h in seed["history"]] == [0] and seed["history"][0]["dev_loss"] == seed["dev"]["loss"]
    assert "dev_non0_acc2" in seed["history"][0]
    assert os.path.exists(os.path.join(out, "summary.json")) and os.listdir(os.path.join(out, "runs"))
    lm = load_checkpoint(out)  # the top level loads the best seed
    assert lm.meta.feature_set == "gen" and lm.config.audio_dim == 4 and lm.meta.model_id
    assert lm.meta.missing_audio == "zeros"  # the training set had text-only rows
    assert not os.path.exists(os.path.join(out, "seed-1", "optimizer.safetensors"))

    metrics_path = str(tmp_path / "metrics.json")
    heatmaps = str(tmp_path / "heatmaps")
    assert evaluate.main(["--checkpoint", out, "--data", dataset[1], "--output", metrics_path,
                          "--heatmaps", heatmaps, "--heatmap-count", "2"]) == 0
    with open(metrics_path) as f:
        saved = json.load(f)
    assert saved["n_rows"] == 12 and len(saved["per_seed"]) == 1
    assert set(saved["mean_std"]) >= {"has0_acc2", "non0_f1", "mae", "corr", "acc7", "acc5"}
    assert len(saved["heatmaps"]) == 2 and all(open(p, "rb").read(4) == b"\x89PNG" for p in saved["heatmaps"])
    # the dev metrics recorded at training time are what evaluate computes on the same data
    assert saved["per_seed"][0]["metrics"]["mae"] == pytest.approx(summary["seeds"][0]["dev"]["mae"], rel=1e-5)


def test_train_job_two_workers(ray_local, dataset, tmp_path):
    train = jobs.train
    out = str(tmp_path / "model2")
    assert train.main(["--train", dataset[0], "--dev", dataset[1], "--output", out, "--encoder",
                       tiny_encoder_dir(), "--epochs", "1", "--workers", "2", "--batch-size", "8",
                       "--fusion", "none", "--cpus-per-worker", "0.5"]) == 0  # fits beside other tests' actors
    summary = storage.read_json(os.path.join(out, "summary.json"))
    assert summary["seeds"][0]["best_epoch"] == 0
    assert load_checkpoint(out).config.fusion == "none"


def test_evaluate_several_seeds(dataset, tmp_path):
    """A multi-seed output (built directly, no Ray): metrics per seed plus mean and std."""
    from cmbert.checkpoint import CheckpointMeta, save_checkpoint, write_multiseed_meta
    from cmbert.model import build_model, load_tokenizer

    out = str(tmp_path / "multi")
    for seed in (1, 11):
        torch.manual_seed(seed)
        model = build_model(CMBertConfig(encoder=tiny_encoder_dir(), audio_dim=4))
        meta = save_checkpoint(model, load_tokenizer(model.config), model.config, os.path.join(out, f"seed-{seed}"),
                               CheckpointMeta(feature_set="gen", feature_dim=4, model_id="tiny", seed=seed))
    write_multiseed_meta(out, CheckpointMeta(checkpoints=["seed-1", "seed-11"], best="seed-11", feature_set="gen",
                                             feature_dim=4, model_id="tiny", model_version=meta.model_version))
    assert jobs.evaluate.main(["--checkpoint", out, "--data", dataset[1], "--output",
                                      str(tmp_path / "m.json")]) == 0
    result = storage.read_json(str(tmp_path / "m.json"))
    assert [s["seed"] for s in result["per_seed"]] == [1, 11]
    assert result["mean_std"]["mae"]["n"] == 2 and result["mean_std"]["mae"]["std"] > 0
    # the data's majority-class rate beside Acc2, in the metrics JSON
    from cmbert.metrics import majority_rates
    from schemas import UTTERANCES_SCHEMA

    labels = storage.read_table(dataset[1], UTTERANCES_SCHEMA).column("label").to_pylist()
    with open(tmp_path / "m.json") as f:
        assert json.load(f)["majority"] == majority_rates(labels) == result["majority"]


def test_train_and_evaluate_on_s3(ray_local, dataset, s3_env, s3_server, tmp_path):
    """Utterances read from s3://, checkpoints (Ray Train's and the published ones) written to s3://, then
    evaluated from s3://: the same contract as on local paths."""
    import pyarrow.fs as pafs

    from schemas import UTTERANCES_SCHEMA

    bucket = s3_env
    train_uri, dev_uri = f"s3://{bucket}/data/train", f"s3://{bucket}/data/dev"
    for local, uri in zip(dataset, (train_uri, dev_uri)):
        storage.write_table(storage.read_table(local, UTTERANCES_SCHEMA), uri, UTTERANCES_SCHEMA)
    out = f"s3://{bucket}/models/tiny"
    assert jobs.train.main(["--train", train_uri, "--dev", dev_uri, "--output", out, "--encoder",
                                   tiny_encoder_dir(), "--epochs", "1", "--workers", "1", "--batch-size", "8"]) == 0
    summary = storage.read_json(f"{out}/summary.json")
    keys = s3_server.list_keys(bucket, "models/tiny/")
    assert "models/tiny/meta.json" in keys and "models/tiny/summary.json" in keys
    assert any(k.startswith("models/tiny/seed-1/") and k.endswith("model.safetensors") for k in keys)
    assert any(k.startswith("models/tiny/runs/") for k in keys)
    lm = load_checkpoint(out)
    assert lm.config.audio_values and lm.config.cls_audio == "mean"  # the job's defaults: the hearing variant
    assert lm.meta.model_version == summary["seeds"][0]["model_version"]
    assert jobs.evaluate.main(["--checkpoint", out, "--data", dev_uri, "--output",
                                      str(tmp_path / "m.json")]) == 0
    result = storage.read_json(str(tmp_path / "m.json"))
    assert result["n_rows"] == 12
    assert result["per_seed"][0]["metrics"]["mae"] == pytest.approx(summary["seeds"][0]["dev"]["mae"], rel=1e-5)
    assert isinstance(storage.locate(out).fs, pafs.S3FileSystem)
