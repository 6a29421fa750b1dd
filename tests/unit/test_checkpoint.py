import json
import os

import pytest
import torch

from cmbert.checkpoint import (CheckpointError, CheckpointMeta, load_checkpoint, read_meta, save_checkpoint,
                               seed_checkpoints, write_multiseed_meta)
from cmbert.collate import collate
from cmbert.model import CMBertConfig, build_model, load_tokenizer
from cmbert.testing import tiny_encoder_config, tiny_rows

META = CheckpointMeta(feature_set="gen", feature_dim=4, model_id="tiny", seed=1, epoch=0, metrics={"mae": 1.0})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    config = CMBertConfig(encoder="minilm", encoder_config=tiny_encoder_config(), audio_dim=4, cls_audio="mean")
    model = build_model(config).eval()
    tok = load_tokenizer(config)
    path = str(tmp_path_factory.mktemp("ckpt") / "seed-1")
    meta = save_checkpoint(model, tok, config, path, META)
    return model, tok, config, path, meta


def test_round_trip(saved):
    model, tok, config, path, meta = saved
    assert sorted(os.listdir(path)) == sorted(list(meta.files) + ["meta.json"])
    lm = load_checkpoint(path)
    assert {k: v for k, v in lm.config.to_dict().items() if k != "encoder_config"} == \
        {k: v for k, v in config.to_dict().items() if k != "encoder_config"}
    assert lm.config.encoder_config["hidden_size"] == 32  # rebuilt from config.json, no pretrained weights
    for key in ("feature_set", "feature_dim", "model_id", "model_version", "seed", "epoch", "metrics"):
        assert key in lm.meta.to_dict()
    assert len(lm.meta.model_version) == 16
    assert lm.meta == meta == read_meta(path)  # what save_checkpoint returns is what meta.json holds
    batch = collate(tiny_rows(4), lm.tokenizer, lm.config.max_len, lm.config.audio_dim)
    args = {k: batch[k] for k in ("input_ids", "attention_mask", "audio")}
    assert torch.equal(lm.model(**args).score, model(**args).score)


def test_multiseed_top_level_loads_best(saved, tmp_path):
    _, tok, config, path, meta = saved
    top = os.path.dirname(path)
    write_multiseed_meta(top, CheckpointMeta(checkpoints=["seed-1"], best="seed-1", feature_set=meta.feature_set,
                                             feature_dim=meta.feature_dim, model_id=meta.model_id,
                                             model_version=meta.model_version))
    assert seed_checkpoints(top) == [os.path.join(top, "seed-1")]
    assert load_checkpoint(top).meta.model_version == meta.model_version


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nothing")):
        load_checkpoint(str(tmp_path / "nothing"))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_truncated_weights_rejected(saved, tmp_path):
    path = _copy(saved[3], tmp_path / "trunc")
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        load_checkpoint(path)


def test_corrupt_bytes_and_unfinished_save_rejected(saved, tmp_path):
    path = _copy(saved[3], tmp_path / "flip")
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "r+b") as f:
        f.seek(os.path.getsize(weights) - 10)
        f.write(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)
    os.remove(os.path.join(path, "meta.json"))  # what a save that died before its last file leaves
    with pytest.raises(CheckpointError, match="did not finish"):
        load_checkpoint(path)


def test_corrupt_meta_rejected(saved, tmp_path):
    path = _copy(saved[3], tmp_path / "meta")
    with open(os.path.join(path, "meta.json"), "w") as f:
        f.write('{"format": "cmbert-check')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump({"format": "something-else"}, f)
    with pytest.raises(CheckpointError, match="not a cmbert checkpoint"):
        load_checkpoint(path)
