import pytest
import torch

from cmbert.model import PAPER, CMBertConfig, build_model, estimate_flops, scale_by_sqrt_norm
from cmbert.testing import tiny_encoder_config

B, T, DA = 3, 9, 5


def make_model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CMBertConfig(encoder_config=tiny_encoder_config(), audio_dim=DA, **kw)).eval()


def make_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 5000, (B, T), generator=g)
    lengths = torch.tensor([T, 6, 3])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    input_ids[:, 0] = 101
    input_ids[torch.arange(B), lengths - 1] = 102
    input_ids = input_ids * mask  # padding id 0
    audio = torch.randn(B, T, DA, generator=g) * mask[..., None]
    audio[:, 0] = 0.0
    return input_ids, mask, audio


def test_shapes_and_hidden_size_from_encoder():
    model = make_model()
    ids, mask, audio = make_batch()
    out = model(input_ids=ids, attention_mask=mask, audio=audio)
    assert out.score.shape == (B,)
    for m in (out.alpha_t, out.beta_a, out.w_m):
        assert m.shape == (B, T, T)
    assert model.fusion.dense.in_features == 32  # from the encoder config, not hard-coded
    assert torch.allclose(out.w_m.sum(-1), torch.ones(B, T))
    # padded keys get exactly zero weight
    assert (out.w_m[2, :, 3:] == 0).all()


def test_embeddings_frozen_rest_trainable():
    model = make_model()
    assert not any(p.requires_grad for p in model.encoder.embeddings.parameters())
    groups = model.param_groups()
    assert groups["fusion"] and groups["head"] and groups["encoder"]


def test_padding_does_not_change_output():
    model = make_model(cls_audio="mean")
    ids, mask, audio = make_batch()
    ref = model(input_ids=ids, attention_mask=mask, audio=audio).score
    pad = mask == 0
    ids2 = ids.clone()
    ids2[pad] = 7777
    audio2 = audio.clone()
    audio2[pad] = 123.0
    out = model(input_ids=ids2, attention_mask=mask, audio=audio2).score
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_paper_mode_ignores_audio_bit_for_bit():
    model = make_model(**PAPER)
    ids, mask, audio = make_batch()
    ref = model(input_ids=ids, attention_mask=mask, audio=audio)
    noise = torch.randn(B, T, DA) * 10  # noise everywhere, [CLS] included: the model zeroes [CLS] itself
    out = model(input_ids=ids, attention_mask=mask, audio=noise)
    assert torch.equal(out.score, ref.score)
    assert torch.equal(ref.beta_a[:, 0], torch.zeros(B, T))  # row [CLS] of beta_a is zero
    assert not torch.equal(out.w_m, ref.w_m)  # the audio does move the other words' weights


def test_mean_mode_audio_reaches_score():
    model = make_model(cls_audio="mean")
    ids, mask, audio = make_batch()
    ref = model(input_ids=ids, attention_mask=mask, audio=audio).score
    out = model(input_ids=ids, attention_mask=mask, audio=torch.randn(B, T, DA) * mask[..., None]).score
    assert not torch.allclose(out, ref)


def test_fusion_none_ignores_audio():
    model = make_model(fusion="none")
    ids, mask, audio = make_batch()
    ref = model(input_ids=ids, attention_mask=mask, audio=audio)
    assert ref.w_m is None and model.fusion is None
    assert torch.equal(model(input_ids=ids, attention_mask=mask, audio=torch.randn(B, T, DA)).score, ref.score)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).score, ref.score)


def test_scale_by_sqrt_norm_per_utterance_and_zero_safe():
    x = torch.randn(2, 4, 3)
    valid = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    y = scale_by_sqrt_norm(x, valid)
    expected = x[0, :3] / x[0, :3].norm().sqrt()
    torch.testing.assert_close(y[0, :3], expected)
    assert (y[0, 3] == 0).all() and (y[1] == 0).all()


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        CMBertConfig(fusion="late")
    with pytest.raises(ValueError):
        CMBertConfig(text_kernel=2)


def test_audio_standardised_with_training_stats_and_paper_mode_still_deaf():
    mean, std = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 4.0, 4.0, 10.0]
    model = make_model(cls_audio="mean", audio_mean=mean, audio_std=std)
    ids, mask, audio = make_batch()
    audio[1, 2] = 0.0  # a word-piece without audio stays exactly zero
    scaled = model.standardise(audio)
    real = audio.abs().sum(-1) > 0
    expected = (audio - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(scaled[real], expected[real])
    assert (scaled[~real] == 0).all()
    paper = make_model(**PAPER, audio_mean=mean, audio_std=std)
    ref = paper(input_ids=ids, attention_mask=mask, audio=audio).score
    out = paper(input_ids=ids, attention_mask=mask, audio=torch.randn(B, T, DA) * 10).score
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="audio_mean"):
        CMBertConfig(audio_dim=4, audio_mean=mean)


def test_audio_values_start_as_the_paper_and_then_hear():
    paper = make_model(**PAPER)
    values = make_model(cls_audio="zero", audio_values=True)
    ids, mask, audio = make_batch()
    ref = paper(input_ids=ids, attention_mask=mask, audio=audio).score
    # V_a starts at zero and draws no random numbers: an untrained variant is the paper's model, bit for bit
    assert torch.equal(values(input_ids=ids, attention_mask=mask, audio=audio).score, ref)
    with torch.no_grad():
        values.fusion.value_a.normal_(std=0.1)  # as after training
    heard = values(input_ids=ids, attention_mask=mask, audio=audio).score
    noise = values(input_ids=ids, attention_mask=mask, audio=torch.randn(B, T, DA) * mask[..., None]).score
    assert not torch.allclose(heard, noise)  # the voice reaches [CLS] as content of the attended values
    silent = values(input_ids=ids, attention_mask=mask, audio=torch.zeros(B, T, DA)).score
    assert torch.equal(silent, ref)  # audio absent (MOSI text): exactly the paper's score
    assert any(p is values.fusion.value_a for p in values.param_groups()["audio"])  # trained at --audio-lr


def test_nonlinear_audio_values_start_as_the_paper_and_then_hear():
    paper = make_model(**PAPER)
    mlp = make_model(cls_audio="zero", audio_values=True, audio_value_hidden=8)
    ids, mask, audio = make_batch()
    ref = paper(input_ids=ids, attention_mask=mask, audio=audio).score
    # value_a_in is drawn on a forked RNG, value_a starts at zero: bit for bit the paper's untrained model
    assert torch.equal(mlp(input_ids=ids, attention_mask=mask, audio=audio).score, ref)
    assert mlp.fusion.value_a_in.shape == (8, DA) and mlp.fusion.value_a.shape[1] == 8
    with torch.no_grad():
        mlp.fusion.value_a.normal_(std=0.1)
    heard = mlp(input_ids=ids, attention_mask=mask, audio=audio).score
    assert not torch.allclose(heard, mlp(input_ids=ids, attention_mask=mask, audio=-audio).score)
    silent = mlp(input_ids=ids, attention_mask=mask, audio=torch.zeros(B, T, DA)).score
    assert torch.equal(silent, ref)  # GELU(0) = 0 and no bias: text-only rows keep the paper's score
    audio_group = mlp.param_groups()["audio"]
    assert any(p is mlp.fusion.value_a_in for p in audio_group) and any(p is mlp.fusion.value_a for p in audio_group)
    with pytest.raises(ValueError, match="audio_value_hidden"):
        CMBertConfig(audio_value_hidden=-1)


def test_direct_audio_term_starts_as_the_paper_and_then_hears():
    """audio_direct: the mean word audio at [CLS] reaches the score through a bias-free linear term, zero at first."""
    base = make_model(cls_audio="mean", audio_values=False, audio_direct=False)
    direct = make_model(cls_audio="mean", audio_values=False, audio_direct=True)
    ids, mask, audio = make_batch()
    ref = base(input_ids=ids, attention_mask=mask, audio=audio).score
    assert torch.equal(direct(input_ids=ids, attention_mask=mask, audio=audio).score, ref)  # no RNG drawn, zero
    with torch.no_grad():
        direct.audio_head.normal_(std=0.1)
    heard = direct(input_ids=ids, attention_mask=mask, audio=audio).score
    # Only the [CLS] row's audio enters the attention at w_a * beta_a: the change is the direct term exactly
    cls = direct.cls_audio(direct.standardise(audio), mask)[:, 0]  # (B, Da)
    assert torch.allclose(heard - ref, cls @ direct.audio_head[0], atol=1e-6)
    silent = torch.zeros(B, T, DA)
    assert torch.equal(direct(input_ids=ids, attention_mask=mask, audio=silent).score,
                       base(input_ids=ids, attention_mask=mask, audio=silent).score)  # text-only rows: exactly 0
    paper_direct = make_model(**PAPER, audio_direct=True)
    with torch.no_grad():
        paper_direct.audio_head.normal_(std=0.1)
    assert torch.equal(paper_direct(input_ids=ids, attention_mask=mask, audio=audio).score,
                       paper_direct(input_ids=ids, attention_mask=mask, audio=-audio).score)  # A_[CLS] = 0: deaf
    assert any(p is direct.audio_head for p in direct.param_groups()["audio"])
    # The default since 2026-12-06; a config saved before the field existed was trained without it
    saved = CMBertConfig(audio_direct=False).to_dict()
    del saved["audio_direct"]
    assert CMBertConfig().audio_direct and not CMBertConfig.from_dict(saved).audio_direct
    assert CMBertConfig.from_dict(CMBertConfig().to_dict()) == CMBertConfig()


def test_which_configs_cannot_hear():
    from cmbert.scoring import audio_cannot_change_score

    assert audio_cannot_change_score(CMBertConfig(**PAPER))
    assert not audio_cannot_change_score(CMBertConfig(cls_audio="zero", audio_values=True))
    assert not audio_cannot_change_score(CMBertConfig(cls_audio="mean", audio_values=False))
    assert not audio_cannot_change_score(CMBertConfig(**PAPER, audio_kernel=3))
    assert not audio_cannot_change_score(CMBertConfig())  # the shipped defaults hear


@pytest.mark.parametrize("kw", [{}, {"audio_values": True, "cls_audio": "mean", "text_kernel": 3, "audio_kernel": 3},
                                {"audio_value_hidden": 6}, {"audio_direct": False}, {"fusion": "none"}])
def test_estimate_flops_counts_every_weight_matrix_of_the_model(kw):
    """The per-token term of estimate_flops is 2 x the weights the model multiplies each word-piece by (every
    matrix outside the embeddings and the head), the constant term 2 x the head's; training is 3 x forward."""
    config = CMBertConfig(encoder_config=tiny_encoder_config(), audio_dim=DA, **kw)
    model = build_model(config)
    matrices = {n: p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and ".embeddings." not in f".{n}"}
    head = matrices.pop("head.weight") + matrices.pop("audio_head", 0)  # once per utterance, not per token
    f1, f2, f3 = (estimate_flops(config, t)["forward"] for t in (1, 2, 3))
    t2 = (f3 - 2 * f2 + f1) / 2  # f(t) = a t^2 + b t + c
    per_token, constant = f2 - f1 - 3 * t2, f1 - (f2 - f1 - 3 * t2) - t2
    assert per_token == 2 * sum(matrices.values()) and constant == 2 * head and t2 > 0
    assert estimate_flops(config, 17)["train"] == 3 * estimate_flops(config, 17)["forward"]
