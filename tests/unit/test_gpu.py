"""The model on a CUDA device: the same scores as on the CPU, paper mode still deaf, bf16 autocast usable.
Skipped without a GPU (CI has none); bench/bench_gpu.py runs training and scoring there."""

import pytest
import torch

from cmbert.model import CMBertConfig, build_model
from cmbert.testing import tiny_encoder_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def model_and_batch(**kw):
    torch.manual_seed(0)
    model = build_model(CMBertConfig(encoder_config=tiny_encoder_config(), audio_dim=5, **kw)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (4, 12), generator=g)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[2, 7:] = 0
    audio = torch.randn(4, 12, 5, generator=g) * mask[..., None]
    return model, ids, mask, audio


@pytest.mark.parametrize("kw", [{"cls_audio": "zero", "audio_values": False}, {"cls_audio": "mean", "audio_values": True}])
def test_cuda_matches_cpu(kw):
    model, ids, mask, audio = model_and_batch(**kw)
    with torch.no_grad():
        model.fusion.value_a.normal_(std=0.1) if model.fusion.value_a is not None else None
        cpu = model(input_ids=ids, attention_mask=mask, audio=audio).score
        model.cuda()
        gpu = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), audio=audio.cuda()).score.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_paper_mode_deaf_on_cuda_and_bf16_finite():
    model, ids, mask, audio = model_and_batch(cls_audio="zero", audio_values=False)  # the paper's model
    model.cuda()
    ids, mask, audio = ids.cuda(), mask.cuda(), audio.cuda()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, audio=audio).score
        out = model(input_ids=ids, attention_mask=mask, audio=torch.randn_like(audio) * 10).score
        assert torch.equal(out, ref)
        with torch.autocast("cuda", torch.bfloat16):
            bf16 = model(input_ids=ids, attention_mask=mask, audio=audio).score.float()
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, ref, rtol=0.05, atol=0.05)


def test_train_step_on_cuda_reduces_loss():
    model, ids, mask, audio = model_and_batch(cls_audio="mean", audio_values=True)
    model.cuda().train()
    ids, mask, audio = ids.cuda(), mask.cuda(), audio.cuda()
    labels = torch.tensor([2.0, -2.0, 1.0, -1.0], device="cuda")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(input_ids=ids, attention_mask=mask, audio=audio).score, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
