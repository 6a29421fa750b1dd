"""One default per option: the train job's flags take the model's and the loop's defaults from their configs;
the loop config, checkpoint metadata and a row read for the model round-trip as typed values."""

import dataclasses
import math

import pytest

from cmbert.checkpoint import MULTI_FORMAT, CheckpointMeta
from cmbert.collate import UtteranceInput, collate
from cmbert.model import PAPER, CMBertConfig, build_model
from cmbert.testing import tiny_encoder_config
from cmbert.training import TrainLoopConfig, default_model_id
from jobs.train import TrainConfig


def test_train_flags_share_the_model_and_loop_defaults():
    model = {f.name: f.default for f in dataclasses.fields(CMBertConfig)}
    loop = {f.name: f.default for f in dataclasses.fields(TrainLoopConfig)}
    shared = 0
    for f in dataclasses.fields(TrainConfig):
        for source in (model, loop):
            if f.name in source and f.name != "model_id":  # model_id: None = derived, on the job only
                assert f.default == source[f.name], f.name
                shared += 1
    assert shared >= 13  # encoder, fusion, cls_audio, audio_values, max_len, proj_dim, dropouts, lrs, epochs, ...
    # the shipped defaults are the hearing variant; the paper's model is named
    assert (CMBertConfig().cls_audio, CMBertConfig().audio_values) == ("mean", True)
    assert (CMBertConfig(**PAPER).cls_audio, CMBertConfig(**PAPER).audio_values) == ("zero", False)
    assert default_model_id(CMBertConfig(encoder="minilm")) == "cmbert-cmbert-mean-values-minilm-l6"


def test_loop_config_round_trips_as_ray_ships_it():
    loop = TrainLoopConfig(model=CMBertConfig(encoder="minilm", audio_dim=4, audio_mean=[0.0] * 4,
                                              audio_std=[1.0] * 4), seed=11, epochs=2, train_config={"lr": 1})
    assert TrainLoopConfig.from_dict(loop.to_dict()) == loop


def test_build_model_fills_a_copy_of_the_config():
    config = CMBertConfig(encoder="minilm", audio_dim=4)
    model = build_model(config)
    assert config.encoder_config is None  # not changed
    assert model.config.encoder_config["hidden_size"] == 384 and model.config.audio_dim == 4
    bare = CMBertConfig(encoder_config=tiny_encoder_config(), audio_dim=4)
    assert build_model(bare).config == bare


def test_checkpoint_meta_round_trip_and_old_files():
    meta = CheckpointMeta(feature_set="gen", feature_dim=4, model_id="tiny", seed=1, epoch=0, metrics={"mae": 1.0})
    assert CheckpointMeta.from_dict(meta.to_dict()) == meta
    assert "best" not in meta.to_dict() and "checkpoints" not in meta.to_dict()  # unset fields stay out
    # a meta.json from before the type: missing keys get the defaults, unknown keys are ignored
    old = CheckpointMeta.from_dict({"format": MULTI_FORMAT, "checkpoints": ["seed-1"], "best": "seed-1",
                                    "model_version": "abc", "something_new": 1})
    assert old.multiseed and old.best == "seed-1" and old.missing_audio == "refuse" and old.feature_dim == 0


def test_a_row_is_read_once_into_a_model_input():
    row = {"utterance_id": "u1", "text": "a b", "label": None,
           "words": [{"word": "a", "features": [1.0, float("nan")]}, {"word": "b", "features": None}]}
    u = UtteranceInput.from_row(row, audio_dim=2)
    assert u.words == ("a", "b") and math.isnan(u.label) and u.audio.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert UtteranceInput.from_row({"text": "just text", "words": [], "label": 2.0}, 2).audio is None
    with pytest.raises(ValueError, match="3 audio features"):
        UtteranceInput.from_row({"text": "a", "words": [{"word": "a", "features": [1.0, 2.0, 3.0]}]}, 2)

    from cmbert.model import load_tokenizer  # collate takes inputs and rows alike (rows go through from_row)

    tok = load_tokenizer(CMBertConfig(encoder="minilm"))
    a, b = collate([row], tok, 50, 2), collate([u], tok, 50, 2)
    assert all((a[k] == b[k]).all() or (a[k].isnan() & b[k].isnan()).all() for k in a)


def test_the_linear_schedule_warms_up_then_decays_to_zero_as_a_function_of_the_step():
    from cmbert.training import WARMUP, lr_factor

    total = 300  # e.g. 12 epochs of 25 global batches
    factors = [lr_factor("linear", step, total) for step in range(total)]
    warmup = round(WARMUP * total)
    assert factors[0] == pytest.approx(1 / warmup) and factors[warmup - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:warmup - 1], factors[1:warmup]))  # rising
    assert all(a > b for a, b in zip(factors[warmup:-1], factors[warmup + 1:]))  # then falling
    assert 0 < factors[-1] <= 1 / (total - warmup) + 1e-12
    assert [lr_factor("constant", s, total) for s in (0, 150, 299)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor("cosine", 0, total)


def test_seed_values_choose_the_seeds_and_bad_lists_fail_in_one_line():
    from cmbert.errors import ConfigError
    from cmbert.training import chosen_seeds

    assert chosen_seeds(3) == [1, 11, 111]
    assert chosen_seeds(3, "1111,11111") == [1111, 11111]  # --seeds is ignored when values are given
    for bad in ("1,1", "a,b", ",", "-1"):
        with pytest.raises(ConfigError, match="--seed-values"):
            chosen_seeds(1, bad)


def test_a_seed_trains_the_same_alone_as_after_another_seed():
    """What --seed-values relies on: seeds trained in separate runs add up to one study (bench_mosi, bench_ravdess)."""
    from cmbert.testing import LocalSession, tiny_loop_config, tiny_rows
    from cmbert.training import train_func

    data = {"train": tiny_rows(16, seed=0), "dev": tiny_rows(8, seed=1)}

    def losses(*seeds):
        for seed in seeds:
            session = LocalSession(data, keep_checkpoints=False)
            train_func(tiny_loop_config(2) | {"seed": seed, "patience": 0}, session=session)
        return [(m["train_loss"], m["dev_loss"]) for m, _ in session.reports]

    assert losses(1, 11) == losses(11)  # bit for bit: each seed reseeds everything it draws


def test_audio_lr_and_the_direct_term_cannot_change_a_text_only_or_a_paper_model():
    """--audio-lr trains the audio-only parameters (CMBert.AUDIO_PARAMS): on text-only rows (MOSI here)
    their gradients are exactly zero, so the rate changes nothing, bit for bit; nor in the paper's model, which
    cannot hear (A_[CLS] = 0, no audio values), so its 3e-3 default keeps `--fusion-lr 0.01` the paper's recipe;
    with audio, in our variant, it changes the run. The same holds for --audio-direct on or off."""
    from cmbert.model import CMBertConfig
    from cmbert.testing import LocalSession, loop_config, tiny_encoder_dir, tiny_rows
    from cmbert.training import NO_AUDIO, train_func

    def losses(audio: bool, audio_lr: float, paper: bool = False, direct: bool = True):
        data = {"train": tiny_rows(16, seed=0, audio=audio), "dev": tiny_rows(8, seed=1, audio=audio)}
        dim = 4 if audio else 1  # text-only data: one channel of zeros, as jobs/train.py sets it
        model = CMBertConfig(encoder=tiny_encoder_dir(), cls_audio="zero" if paper else "mean",
                             audio_values=not paper, audio_dim=dim, audio_direct=direct)
        cfg = loop_config(model, epochs=2, batch_size=8, patience=0, audio_lr=audio_lr,
                          feature_set="gen" if audio else NO_AUDIO, feature_dim=dim if audio else 0)
        session = LocalSession(data, keep_checkpoints=False)
        train_func(cfg, session=session)
        return [(m["train_loss"], m["dev_loss"]) for m, _ in session.reports]

    assert losses(False, 1e-3) == losses(False, 0.3)
    assert losses(True, 1e-3, paper=True) == losses(True, 0.3, paper=True)
    assert losses(True, 1e-3) != losses(True, 0.3)
    assert losses(False, 1e-3, direct=False) == losses(False, 1e-3)
    assert losses(True, 1e-3, paper=True, direct=False) == losses(True, 1e-3, paper=True)
    assert losses(True, 1e-3, direct=False) != losses(True, 1e-3)
