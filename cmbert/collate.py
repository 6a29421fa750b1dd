"""Utterance rows -> model tensors; batching rows for inference; reading labelled utterance datasets.

Reading has one typed path: a row as ``schemas.UTTERANCES_SCHEMA`` gives it (``table.to_pylist()``, a dict with
``text``, ``words`` (a list of ``{word, features, ...}``) and ``label``) becomes an ``UtteranceInput`` once
(``UtteranceInput.from_row``): its words, its word audio as one array, its label. Each word's audio vector is
spread over its word-pieces; [CLS], [SEP], padding and words without features (text-only rows) get zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cmbert.errors import FeatureMismatch
from cmbert.storage import read_table

COLUMNS = ("utterance_id", "text", "words", "label", "feature_set", "feature_dim", "audio_present", "start", "end")


@dataclass(frozen=True, eq=False)
class UtteranceInput:
    """One utterance as the model reads it (training, evaluation): converted from its row once, then batched
    by ``collate`` as often as needed."""

    utterance_id: str
    words: tuple[str, ...]
    audio: np.ndarray | None  # (n_words, Da) float32, zeros for words without features; None: no word has any
    label: float  # NaN when the row has no finite label

    @classmethod
    def from_row(cls, row: dict, audio_dim: int) -> "UtteranceInput":
        """ValueError (naming the word) when a word's vector does not have ``audio_dim`` features."""
        return cls(str(row.get("utterance_id") or ""), tuple(row_words(row)), _word_vectors(row, audio_dim),
                   _label(row.get("label")))


def as_inputs(rows: Sequence[dict | UtteranceInput], audio_dim: int) -> list[UtteranceInput]:
    """``rows`` as model inputs: dict rows are read (``UtteranceInput.from_row``), inputs pass through."""
    return [r if isinstance(r, UtteranceInput) else UtteranceInput.from_row(r, audio_dim) for r in rows]


def row_words(row: dict) -> list[str]:
    """The words of a row; a row without aligned words falls back to its whitespace-split text."""
    words = [w["word"] for w in (row.get("words") or [])]
    return words if words else (row.get("text") or "").split()


def _label(value) -> float:
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def collate(rows: Sequence[dict | UtteranceInput], tokenizer, max_len: int, audio_dim: int) -> dict[str, torch.Tensor]:
    """Tokenize the rows' words (truncated to ``max_len`` word-pieces) and align their audio.

    Returns input_ids (B, T) int64, attention_mask (B, T) int64, audio (B, T, audio_dim) float32 and
    labels (B,) float32 with NaN where a row has no label. T is the longest row in the batch (<= max_len).
    """
    inputs = as_inputs(rows, audio_dim)
    enc = tokenizer([list(u.words) or [tokenizer.unk_token] for u in inputs], is_split_into_words=True,
                    truncation=True, max_length=max_len, padding="longest", return_tensors="pt")
    input_ids = enc["input_ids"]  # (B, T)
    audio = np.zeros((len(inputs), input_ids.shape[1], audio_dim), dtype=np.float32)  # (B, T, Da)
    for i, u in enumerate(inputs):
        if u.audio is None:
            continue
        word_ids = np.array([-1 if w is None else w for w in enc.word_ids(i)])  # (T,)
        pieces = word_ids >= 0
        audio[i, pieces] = u.audio[word_ids[pieces]]
    return {
        "input_ids": input_ids,
        "attention_mask": enc["attention_mask"],
        "audio": torch.from_numpy(audio),
        "labels": torch.tensor([u.label for u in inputs], dtype=torch.float32),
    }


def _word_vectors(row: dict, audio_dim: int) -> np.ndarray | None:
    """(n_words, audio_dim) float32 with zero rows for words without features; None when no word has any."""
    feats = [w.get("features") for w in row.get("words") or []]
    have = [j for j, f in enumerate(feats) if f is not None]
    if not have:
        return None
    try:  # one conversion for the whole row: per-word numpy calls were half of collation's time
        vectors = np.asarray([feats[j] for j in have], dtype=np.float32)  # (n_with, Da)
    except ValueError:  # ragged: some word's vector has another length
        vectors = None
    if vectors is None or vectors.shape != (len(have), audio_dim):
        j = next(j for j in have if np.asarray(feats[j]).size != audio_dim)
        raise FeatureMismatch(f"word {j} ({row['words'][j].get('word')!r}) has {np.asarray(feats[j]).size} audio "
                         f"features, the model expects {audio_dim}: the utterances were made with another "
                         "feature set")
    out = np.zeros((len(feats), audio_dim), dtype=np.float32)
    out[have] = np.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def token_lengths(rows: Sequence[dict | UtteranceInput], tokenizer, max_len: int) -> list[int]:
    words = [list(r.words) if isinstance(r, UtteranceInput) else row_words(r) for r in rows]
    enc = tokenizer([w or [tokenizer.unk_token] for w in words], is_split_into_words=True,
                    truncation=True, max_length=max_len)
    return [len(ids) for ids in enc["input_ids"]]


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length (stable sort by length), so padding is small.

    Every index appears exactly once; callers write results back by index, so input order is kept.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def predict_rows(model, tokenizer, rows: Sequence[dict | UtteranceInput], max_len: int, audio_dim: int,
                 batch_size: int = 64, device: str | torch.device = "cpu",
                 keep_attention: Iterable[int] = ()) -> tuple[np.ndarray, dict]:
    """Scores for ``rows`` in their order (length-bucketed batches), eval mode.

    ``keep_attention``: row indices whose (alpha_t, beta_a, w_m, input_ids) to return, cropped to real tokens.
    """
    model.eval()
    rows = as_inputs(rows, audio_dim)
    keep = set(keep_attention)
    scores = np.zeros(len(rows), dtype=np.float32)
    attention: dict[int, dict] = {}
    for idx in length_buckets(token_lengths(rows, tokenizer, max_len), batch_size):
        batch = collate([rows[i] for i in idx], tokenizer, max_len, audio_dim)
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    audio=batch["audio"].to(device))
        scores[idx] = out.score.float().cpu().numpy()
        for k, i in enumerate(idx.tolist()):
            if i in keep and out.w_m is not None:
                n = int(batch["attention_mask"][k].sum())
                attention[i] = {"input_ids": batch["input_ids"][k, :n].tolist(),
                                "alpha_t": out.alpha_t[k, :n, :n].float().cpu().numpy(),
                                "beta_a": out.beta_a[k, :n, :n].float().cpu().numpy(),
                                "w_m": out.w_m[k, :n, :n].float().cpu().numpy()}
    return scores, attention


def read_utterances(uri: str, label_column: str = "label") -> tuple[pa.Table, int]:
    """An utterance dataset's columns that training and evaluation need, ``label`` taken from ``label_column``
    (a column, or a key of the ``extra`` map); rows without a finite label are dropped (their count returned)."""
    table = read_table(uri)
    if label_column != "label":
        if label_column in table.column_names:
            label = pc.cast(table.column(label_column), pa.float64())
        elif "extra" in table.column_names:  # a manifest column carried through as text
            values = [dict(m or {}).get(label_column) for m in table.column("extra").to_pylist()]
            label = pa.array([_parse_float(v) for v in values], pa.float64())
        else:
            raise ValueError(f"{uri} has no column {label_column!r}")
        table = table.set_column(table.column_names.index("label"), "label", label)
    table = table.select([c for c in COLUMNS if c in table.column_names])
    labelled = pc.and_(pc.is_valid(table.column("label")), pc.invert(pc.is_nan(pc.fill_null(table.column("label"), 0.0))))
    kept = table.filter(labelled)
    return kept, table.num_rows - kept.num_rows


def _parse_float(value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
