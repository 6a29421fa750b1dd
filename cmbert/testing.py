"""Factories shared by tests/ and bench/: a tiny BERT (2 layers, hidden 32) with the MiniLM vocabulary, tiny
checkpoints, generated utterance rows that fit UTTERANCES_SCHEMA, and train_func's session stand-in.
Nothing is downloaded; nothing here is used by the jobs."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import random
import shutil
import tempfile
from dataclasses import asdict

import numpy as np
import pyarrow as pa

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("good great fine happy love bad awful sad hate boring the movie was really not very plot acting "
         "unbelievably").split()
POSITIVE, NEGATIVE = {"good", "great", "fine", "happy", "love"}, {"bad", "awful", "sad", "hate", "boring"}
FEATURES = "egemaps_v02_lld"
DIM = 25
SCORE_DATE = "2024-05-01"  # the --score-date of the tests' score runs (utterance_rows are made the day before)
SCORE_WORDS = "the movie was great but the ending felt awful and slow honestly fine".split()


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


def make_checkpoint(uri: str, feature_set: str = FEATURES, feature_dim: int = DIM, **config) -> dict:
    """A tiny CM-BERT (2 layers, hidden 32) with the bundled MiniLM tokenizer, saved with the real API."""
    import torch

    from cmbert.checkpoint import save_checkpoint
    from cmbert.model import CMBertConfig, build_model, load_tokenizer

    torch.manual_seed(0)
    cfg = CMBertConfig(encoder="minilm", encoder_config=tiny_encoder_config(), audio_dim=max(feature_dim, 1),
                       max_len=32, **config)
    model = build_model(cfg)
    meta = {"feature_set": feature_set, "feature_dim": feature_dim, "model_id": "cmbert-tiny", "seed": 0}
    return save_checkpoint(model, load_tokenizer(cfg), cfg, uri, meta)


def utterance_rows(n: int, start: int = 0, no_audio: int = 0, seed: int = 0) -> list[dict]:
    """``n`` utterances of clip ids clip-0..2; the last ``no_audio`` of them are text-only rows."""
    rng = np.random.default_rng(seed + start)
    now = dt.datetime(2024, 4, 30, tzinfo=dt.timezone.utc)
    rows = []
    for i in range(start, start + n):
        absent = i >= start + n - no_audio
        k = int(rng.integers(2, 12))
        words = [SCORE_WORDS[int(j)] for j in rng.integers(0, len(SCORE_WORDS), size=k)]
        t0 = float(i)
        rows.append({
            "utterance_id": f"clip-{i % 3}-{i * 1000:09d}", "task_id": f"clip-{i % 3}", "clip_id": f"clip-{i % 3}",
            "source": f"clip-{i % 3}.wav", "speaker": None if absent else f"SPEAKER_{i % 2:02d}",
            "start": None if absent else t0, "end": None if absent else t0 + 0.3 * k, "text": " ".join(words),
            "label": None,
            "words": [{"word": w, "start": None if absent else t0 + 0.3 * j, "end": None if absent else t0 + 0.3 * j + 0.25,
                       "speaker": None, "features": None if absent else rng.normal(size=DIM).astype(np.float32).tolist()}
                      for j, w in enumerate(words)],
            "words_source": "text" if absent else "align", "audio_present": not absent,
            "feature_set": "none" if absent else FEATURES, "feature_dim": 0 if absent else DIM,
            "extra": [], "run_id": "preprocess-test", "created_at": now,
        })
    return rows


class LocalSession:
    """train_func's view of Ray Train, in-process: one worker, checkpoints copied to a temp folder."""

    rank, world_size = 0, 1

    def __init__(self, rows: dict, resume_from: str | None = None):
        self._rows, self.resume_from = rows, resume_from
        self.out = tempfile.mkdtemp(prefix="cmbert-local-run-")
        self.reports = []

    def rows(self, name):
        return [dict(r) for r in self._rows[name]]

    def device(self):
        import torch

        return torch.device("cpu")

    def prepare(self, model):
        return model

    @contextlib.contextmanager
    def latest_checkpoint(self):
        yield self.resume_from

    def report(self, metrics, checkpoint_dir, name):
        saved = None
        if checkpoint_dir:
            saved = os.path.join(self.out, name)
            shutil.copytree(checkpoint_dir, saved)
        self.reports.append((metrics, saved))


def loop_config(epochs: int) -> dict:
    from jobs import train

    from cmbert.model import CMBertConfig

    enc = tiny_encoder_dir()
    cfg = train.TrainConfig(train="-", dev="-", output="-", encoder=enc, cls_audio="mean", epochs=epochs,
                            batch_size=8, fusion_lr=1e-3)
    model = CMBertConfig(encoder=enc, cls_audio="mean", audio_dim=4)
    return {"train": asdict(cfg), "seed": 1, "model": model.to_dict(), "audio_dim": 4, "feature_set": "gen",
            "feature_dim": 4, "model_id": "tiny", "threads": 1, "run_id": "test", "code_version": "test",
            "missing_audio": "refuse"}
