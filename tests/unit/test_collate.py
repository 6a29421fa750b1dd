import math

import pytest
import torch

from cmbert.collate import collate, length_buckets, token_lengths
from cmbert.model import load_tokenizer, CMBertConfig


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(CMBertConfig(encoder="minilm"))


def word(w, f):
    return {"word": w, "start": None, "end": None, "speaker": None, "features": f}


def test_audio_spread_over_word_pieces(tok):
    rows = [{"text": "HELLO unbelievably", "label": 1.5,
             "words": [word("HELLO", [1.0, 2.0]), word("unbelievably", [3.0, 4.0])]}]
    b = collate(rows, tok, max_len=50, audio_dim=2)
    pieces = tok.convert_ids_to_tokens(b["input_ids"][0])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and pieces[1] == "hello"
    n_unb = len(tok.tokenize("unbelievably"))
    assert n_unb > 1
    assert b["audio"].dtype == torch.float32 and b["audio"].shape == (1, 2 + 1 + n_unb, 2)
    assert b["audio"][0, 0].tolist() == [0, 0] and b["audio"][0, -1].tolist() == [0, 0]
    assert b["audio"][0, 1].tolist() == [1, 2]
    assert all(b["audio"][0, 2 + k].tolist() == [3, 4] for k in range(n_unb))
    assert b["labels"].tolist() == [1.5]


def test_padding_text_only_and_missing_label(tok):
    rows = [{"text": "a b c d", "label": None, "words": [word(w, None) for w in "a b c d".split()]},
            {"text": "just text, no words", "label": -2.0, "words": []},
            {"text": "x", "label": float("nan"), "words": [word("x", [5.0, 5.0])]}]
    b = collate(rows, tok, max_len=50, audio_dim=2)
    assert b["input_ids"].shape == b["attention_mask"].shape
    assert b["attention_mask"][2].sum() == 3  # [CLS] x [SEP], then padding
    assert (b["audio"][:2] == 0).all()
    assert (b["audio"][2, 3:] == 0).all() and b["audio"][2, 1].tolist() == [5, 5]
    assert math.isnan(b["labels"][0]) and b["labels"][1] == -2.0 and math.isnan(b["labels"][2])


def test_truncation_keeps_sep(tok):
    rows = [{"text": "", "label": 0.0, "words": [word("good", [1.0]) for _ in range(80)]}]
    b = collate(rows, tok, max_len=10, audio_dim=1)
    assert b["input_ids"].shape == (1, 10)
    assert tok.convert_ids_to_tokens(b["input_ids"][0])[-1] == "[SEP]"
    assert b["audio"][0, 1:9].eq(1).all() and b["audio"][0, 9] == 0


def test_wrong_feature_size_is_an_error(tok):
    rows = [{"text": "a", "label": 0.0, "words": [word("a", [1.0, 2.0, 3.0])]}]
    with pytest.raises(ValueError, match="3 audio features"):
        collate(rows, tok, max_len=50, audio_dim=2)


def test_length_buckets_sort_and_cover(tok):
    rows = [{"text": " ".join(["w"] * n), "words": []} for n in (5, 1, 9, 3, 7)]
    buckets = length_buckets(token_lengths(rows, tok, max_len=50), batch_size=2)
    assert [b.tolist() for b in buckets] == [[1, 3], [0, 4], [2]]


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], [1.0]])
def test_wrong_feature_size_names_the_word(tok, bad):
    rows = [{"text": "a b c", "label": 0.0,
             "words": [word("a", [1.0, 2.0]), word("b", None), word("c", bad)]}]
    with pytest.raises(ValueError, match=r"word 2 \('c'\) has \d audio features, the model expects 2"):
        collate(rows, tok, max_len=50, audio_dim=2)


def test_missing_and_non_finite_features_become_zero(tok):
    rows = [{"text": "a b", "label": 0.0, "words": [word("a", [float("nan"), float("inf")]), word("b", None)]}]
    b = collate(rows, tok, max_len=50, audio_dim=2)
    assert b["audio"][0].abs().sum() == 0
