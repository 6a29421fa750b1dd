"""Shared by the model/training tests: a tiny BERT (2 layers, hidden 32) with the MiniLM vocabulary, and
generated utterance datasets that fit UTTERANCES_SCHEMA. Nothing is downloaded."""

from __future__ import annotations

import datetime as dt
import functools
import os
import random
import tempfile

import pyarrow as pa

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("good great fine happy love bad awful sad hate boring the movie was really not very plot acting "
         "unbelievably").split()
POSITIVE, NEGATIVE = {"good", "great", "fine", "happy", "love"}, {"bad", "awful", "sad", "hate", "boring"}


def tiny_encoder_config() -> dict:
    from transformers import BertConfig

    return BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                      vocab_size=30522, max_position_embeddings=64).to_dict()


@functools.lru_cache(maxsize=None)
def tiny_encoder_dir() -> str:
    """A saved tiny BERT (random weights, fixed seed) plus the MiniLM tokenizer, usable as --encoder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from cmbert.model import resolve_encoder

    path = tempfile.mkdtemp(prefix="cmbert-tiny-bert-")
    torch.manual_seed(0)
    BertModel(BertConfig(**tiny_encoder_config()), add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_encoder("minilm")).save_pretrained(path)
    return path


def tiny_rows(n: int, audio_dim: int = 4, seed: int = 0, audio: bool = True) -> list[dict]:
    """Utterance rows: the label follows the sentiment words, and audio feature 0 follows the label."""
    from cmbert.manifest import Utterance, Word, text_id

    rng = random.Random(seed)
    now = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        label = max(-3.0, min(3.0, sum((w in POSITIVE) - (w in NEGATIVE) for w in words) + rng.gauss(0, 0.3)))
        t, word_objs = 0.0, []
        for w in words:
            feats = tuple([label / 3 + rng.gauss(0, 0.1)] + [rng.gauss(0, 1) for _ in range(audio_dim - 1)])
            word_objs.append(Word(w, t if audio else None, t + 0.3 if audio else None, "S0",
                                  feats if audio else None))
            t += 0.35
        text = " ".join(words)
        clip = text_id(f"{seed}-{i}-{text}")
        utt = Utterance(clip_id=clip, task_id=clip, source=f"gen/{i}.wav" if audio else f"manifest:{i}", speaker="S0",
                        start=0.0 if audio else None, end=t if audio else None, text=text, words=tuple(word_objs),
                        words_source="align" if audio else "text", feature_set="gen" if audio else "none",
                        feature_dim=audio_dim if audio else 0, label=round(label, 3))
        rows.append(utt.to_row("test-run", now))
    return rows


def write_utterances(path: str, rows: list[dict]) -> str:
    from cmbert.storage import write_table
    from schemas import UTTERANCES_SCHEMA

    write_table(pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA), path, UTTERANCES_SCHEMA)
    return path
