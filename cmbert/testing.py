"""Factories shared by tests/ and bench/: a tiny BERT (2 layers, hidden 32) with the MiniLM vocabulary, tiny
checkpoints, generated utterance rows that fit UTTERANCES_SCHEMA, and train_func's session stand-in.
Nothing is downloaded; nothing here is used by the jobs."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import random
import tempfile

import pyarrow as pa

from cmbert import storage

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("good great fine happy love bad awful sad hate boring the movie was really not very plot acting "
         "unbelievably").split()
POSITIVE, NEGATIVE = {"good", "great", "fine", "happy", "love"}, {"bad", "awful", "sad", "hate", "boring"}
FEATURES = "egemaps_v02_lld"
DIM = 25
SCORE_DATE = "2024-05-01"  # the --score-date of the tests' score runs (after utterance_rows' created_at)
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


def utterance_rows(n: int, *, start: int = 0, seed: int = 0, words: tuple[int, int] = (3, 12),
                   vocab: tuple[str, ...] | list[str] = WORDS, audio_dim: int = 4, feature_set: str = "gen",
                   audio: bool = True, no_audio: int = 0, labelled: bool = True,
                   run_id: str = "test-run") -> list[dict]:
    """``n`` generated utterances (rows ``start`` .. ``start + n - 1``), each its own clip, built with the data model.

    Each has ``words[0]``..``words[1]`` words drawn from ``vocab``; the label follows the sentiment words (None
    unless ``labelled``), and audio feature 0 (of ``audio_dim``) follows the label. Text-only rows (all of them
    without ``audio``, else the last ``no_audio``) have no times, no features and ``feature_set`` "none". The same
    arguments give the same rows; rows of another ``start`` have other ids.
    """
    from cmbert.manifest import Utterance, Word, text_id

    rng = random.Random(seed + start)
    now = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for i in range(start, start + n):
        timed = audio and i < start + n - no_audio
        ws = [rng.choice(vocab) for _ in range(rng.randint(*words))]
        label = max(-3.0, min(3.0, sum((w in POSITIVE) - (w in NEGATIVE) for w in ws) + rng.gauss(0, 0.3)))
        t, word_objs = 0.0, []
        for w in ws:
            feats = tuple([label / 3 + rng.gauss(0, 0.1)] + [rng.gauss(0, 1) for _ in range(audio_dim - 1)])
            word_objs.append(Word(w, t if timed else None, t + 0.3 if timed else None, "S0", feats if timed else None))
            t += 0.35
        text = " ".join(ws)
        clip = text_id(f"{seed}-{i}-{text}")
        utt = Utterance(clip_id=clip, task_id=clip, source=f"gen/{i}.wav" if timed else f"manifest:{i}", speaker="S0",
                        start=0.0 if timed else None, end=t if timed else None, text=text, words=tuple(word_objs),
                        words_source="align" if timed else "text", feature_set=feature_set if timed else "none",
                        feature_dim=audio_dim if timed else 0, label=round(label, 3) if labelled else None)
        rows.append(utt.to_row(run_id, now))
    return rows


def tiny_rows(n: int, audio_dim: int = 4, seed: int = 0, audio: bool = True) -> list[dict]:
    """The training tests' rows: labelled, 3-12 words, ``audio_dim`` generated features (see utterance_rows)."""
    return utterance_rows(n, seed=seed, audio_dim=audio_dim, audio=audio)


def scoring_rows(n: int, start: int = 0, no_audio: int = 0, seed: int = 0) -> list[dict]:
    """The score tests' rows: unlabelled, 2-11 words, with make_checkpoint's default features (FEATURES, DIM)."""
    return utterance_rows(n, start=start, seed=seed, words=(2, 11), vocab=SCORE_WORDS, audio_dim=DIM,
                          feature_set=FEATURES, no_audio=no_audio, labelled=False, run_id="preprocess-test")


def write_utterances(path: str, rows: list[dict]) -> str:
    from cmbert.storage import write_table
    from schemas import UTTERANCES_SCHEMA

    write_table(pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA), path, UTTERANCES_SCHEMA)
    return path


def make_checkpoint(uri: str, feature_set: str = FEATURES, feature_dim: int = DIM, *, encoder: str | None = None,
                    model_id: str = "cmbert-tiny", **config):
    """An untrained CM-BERT saved with the real API: the tiny BERT (2 layers, hidden 32) with the bundled MiniLM
    tokenizer, or the named ``encoder``'s real weights (bench/). The paper's model (``PAPER``) unless ``config``
    says otherwise. Returns its CheckpointMeta."""
    import torch

    from cmbert.checkpoint import CheckpointMeta, save_checkpoint
    from cmbert.model import PAPER, CMBertConfig, build_model, load_tokenizer

    torch.manual_seed(0)
    if encoder is None:
        cfg = CMBertConfig(encoder="minilm", encoder_config=tiny_encoder_config(), audio_dim=max(feature_dim, 1),
                           max_len=32, **(PAPER | config))
    else:
        cfg = CMBertConfig(encoder=encoder, audio_dim=max(feature_dim, 1), **(PAPER | config))
    model = build_model(cfg)  # model.config: cfg with the encoder's config filled in
    meta = CheckpointMeta(feature_set=feature_set, feature_dim=feature_dim, model_id=model_id, seed=0)
    return save_checkpoint(model, load_tokenizer(model.config), model.config, uri, meta)


class LocalSession:
    """train_func's view of Ray Train, in-process: one worker on ``device``; each reported checkpoint is copied
    to a temp folder (unless ``keep_checkpoints`` is False) and ``reports`` holds (metrics, copy or None).

    With ``world_size`` > 1 it is rank ``rank`` of a torch.distributed group the caller has set up (one process
    per rank): DDP and the broadcast then run as under Ray Train (RaySession's own broadcast)."""

    def __init__(self, rows: dict, resume_from: str | None = None, device: str = "cpu", keep_checkpoints: bool = True,
                 rank: int = 0, world_size: int = 1):
        self._rows, self.resume_from, self._device = rows, resume_from, device
        self.rank, self.world_size = rank, world_size
        self.out = tempfile.mkdtemp(prefix="cmbert-local-run-") if keep_checkpoints else None
        self.reports = []

    def rows(self, name):
        return [dict(r) for r in self._rows[name]]

    def device(self):
        import torch

        return torch.device(self._device)

    def prepare(self, model):
        if self.world_size == 1:
            return model
        import torch

        return torch.nn.parallel.DistributedDataParallel(model)

    def broadcast(self, value):
        if self.world_size == 1:
            return value
        from cmbert.training import broadcast_from_rank0

        return broadcast_from_rank0(value, self.device())

    @contextlib.contextmanager
    def latest_checkpoint(self):
        yield self.resume_from

    def report(self, metrics, checkpoint_dir, name):
        saved = None
        if checkpoint_dir and self.out is not None:
            saved = os.path.join(self.out, name)
            storage.copy_tree(checkpoint_dir, saved)
        self.reports.append((dict(metrics), saved))


def loop_config(model_cfg, *, seed: int = 1, feature_set: str = "gen", feature_dim: int = 4, model_id: str = "tiny",
                threads: int = 1, run_id: str = "test", code_version: str = "test", missing_audio: str = "refuse",
                **loop) -> dict:
    """train_func's config (cmbert.training.TrainLoopConfig, as Ray ships it) for ``model_cfg``; ``loop``: epochs,
    batch_size, lr, fusion_lr, precision... (their defaults are TrainLoopConfig's, the job's)."""
    from cmbert.training import TrainLoopConfig

    return TrainLoopConfig(model=model_cfg, seed=seed, feature_set=feature_set, feature_dim=feature_dim,
                           model_id=model_id, threads=threads, run_id=run_id, code_version=code_version,
                           missing_audio=missing_audio, **loop).to_dict()


def tiny_loop_config(epochs: int) -> dict:
    """The training tests' loop: the tiny BERT, 4 generated features, batches of 8 (rows from tiny_rows); audio at
    [CLS], none in the attention's values (the golden losses of tests/jobs/test_train.py are this model's)."""
    from cmbert.model import CMBertConfig

    model = CMBertConfig(encoder=tiny_encoder_dir(), cls_audio="mean", audio_values=False, audio_dim=4)
    return loop_config(model, epochs=epochs, batch_size=8, fusion_lr=1e-3)
