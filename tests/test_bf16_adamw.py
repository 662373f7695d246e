"""Tests for bf16_adamw.py: stochastic rounding is unbiased and keeps NaN; BF16AdamW is torch's AdamW on fp32
weights and delivers updates far below the bf16 gap on bf16 weights. Expected values are worked by hand."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bf16_adamw  # noqa: E402


def test_round_to_bf16_is_unbiased():
    # 1 + 0.3 ulp lies between the bf16 numbers 1 and 1 + 2^-7: it must round up 30% of the time
    torch.manual_seed(0)
    for x in (1.0 + 0.3 * 2 ** -7, -(0.02 + 1e-5)):
        xs = torch.full((100_000,), x)
        r = bf16_adamw.round_to_bf16(xs)
        assert r.dtype == torch.bfloat16
        lo, hi = sorted({v.item() for v in r.float().unique()})  # exactly the two neighbours of x
        assert lo < x < hi and hi - lo <= abs(x) * 2 ** -7
        p_hi = (x - lo) / (hi - lo)
        assert abs((r.float() == hi).float().mean().item() - p_hi) < 0.01  # 0.01 is > 6 standard errors
    exact = torch.tensor([0.0, 1.0, -2.5, 0.015625, float("inf")])  # bf16 numbers: unchanged, every time
    assert torch.equal(bf16_adamw.round_to_bf16(exact.repeat(1000)).float(), exact.repeat(1000))
    # NaN stays NaN whatever its bits (CUDA writes 0x7FFFFFFF; a plain integer add would make it -0.0)
    nans = torch.tensor([0x7FC00000, 0x7FFFFFFF, -1, 0x7F800001], dtype=torch.int32).view(torch.float32)
    assert bf16_adamw.round_to_bf16(nans.repeat(1000)).isnan().all()


@pytest.mark.parametrize("eps", [1e-8, 0.1])  # a large eps shows where it is added
def test_bf16_adamw_matches_torch_adamw_in_fp32(eps):
    # the same equations: on fp32 weights (no rounding) it must track torch.optim.AdamW step by step
    torch.manual_seed(0)
    w, b = torch.randn(20, 7), torch.randn(7)
    ours = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    ref = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "weight_decay": 0.0}]
    opt_ours = bf16_adamw.BF16AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.95), eps=eps)
    opt_ref = torch.optim.AdamW(groups(ref), lr=1e-2, betas=(0.9, 0.95), eps=eps)
    opt_ours.slice_size = 13  # 140 weights in 11 unequal slices: slicing must not change the update
    for _ in range(6):
        for p, q in zip(ours, ref):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt_ours.step()
        opt_ref.step()
    for p, q in zip(ours, ref):
        assert torch.allclose(p, q, atol=1e-6)
        assert not torch.allclose(p, w if p.dim() == 2 else b, atol=1e-3)  # and they did move


def test_bf16_adamw_applies_small_updates():
    # lr 1e-5 on weights of std 0.02 (a Llama's): Adam moves each weight by ~lr * sign(grad) per step, far
    # below the bf16 gap (1.2e-4 at 0.02). In expectation the full update must arrive: 10 steps, 1e-4.
    torch.manual_seed(0)
    p = torch.nn.Parameter((torch.randn(256, 256) * 0.02).bfloat16())
    w0, g = p.detach().float().clone(), torch.randn(256, 256).bfloat16()
    opt = bf16_adamw.BF16AdamW([{"params": [p], "weight_decay": 0.0}], lr=1e-5, betas=(0.9, 0.95))
    for _ in range(10):
        p.grad = g.clone()
        opt.step()
    assert p.dtype == opt.state[p]["m"].dtype == opt.state[p]["v"].dtype == torch.bfloat16  # 8 bytes per weight
    moved = ((w0 - p.float()) * g.float().sign()).mean().item()  # along -sign(grad)
    assert abs(moved - 1e-4) < 5e-6, moved


def test_bf16_adamw_refuses_a_beta2_its_bf16_moments_cannot_hold():
    with pytest.raises(ValueError, match="beta2"):
        bf16_adamw.BF16AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, betas=(0.9, 0.999))
