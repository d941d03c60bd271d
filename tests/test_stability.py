"""Tests for rlref.stability: clipping factor, Adam updates after a spike, token_mult_prob_error."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlref.losses import ClippedPGLoss
from rlref.stability import adam_updates, clip_coefficient, token_mult_prob_error


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), max_norm=st.floats(0.1, 10.0))
def test_clip_coefficient_matches_torch_clip_grad_norm(seed, scale, max_norm):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(5, dtype=torch.float64)),
              torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) * scale for p in params]
    for p, gr in zip(params, grads, strict=True):
        p.grad = gr.clone()
    total = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    coef = clip_coefficient(total, max_norm)
    for p, gr in zip(params, grads, strict=True):
        torch.testing.assert_close(p.grad, gr * coef, rtol=1e-12, atol=1e-15)
    assert coef <= 1.0


def test_clip_coefficient_hand_values():
    assert clip_coefficient(4.0, 1.0) == pytest.approx(0.25, rel=1e-6)
    assert clip_coefficient(0.5, 1.0) == 1.0
    assert clip_coefficient(1e9, None) == 1.0
    with pytest.raises(ValueError, match="max_grad_norm"):
        clip_coefficient(1.0, 0.0)
    with pytest.raises(ValueError, match="total_norm"):
        clip_coefficient(-1.0, 1.0)


def test_adam_updates_match_torch_adam():
    grads = [1.0, -0.5, 2.0, 1e4, 1.0, 1.0, 0.3]
    p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    moves = []
    for gval in grads:
        before = float(p.detach())
        p.grad = torch.tensor(gval, dtype=torch.float64)
        opt.step()
        moves.append(before - float(p.detach()))
    assert adam_updates(grads, lr=1e-2) == pytest.approx(moves, rel=1e-9)


def test_one_spike_shrinks_later_adam_updates_and_clipping_prevents_it():
    before, spike, after = [1.0] * 20, [1e4], [1.0] * 20
    raw = adam_updates(before + spike + after, lr=1.0)
    clipped = adam_updates([g * clip_coefficient(abs(g), 1.0) for g in before + spike + after], lr=1.0)
    assert raw[19] == pytest.approx(1.0, rel=1e-3)
    assert raw[-1] < 0.1  # twenty steps later the update is still >10x smaller
    assert clipped[-1] == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="not finite"):
        adam_updates([1.0, math.nan])


def test_token_mult_prob_error_matches_the_loss_metric_and_hand_value():
    gen = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, -0.1]], dtype=torch.float64)
    prev = torch.tensor([[0.0, -1.1, -2.0], [0.0, -0.3, -0.4]], dtype=torch.float64)
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    value = token_mult_prob_error(gen[:, 1:], prev[:, 1:], mask[:, 1:])
    expected = (math.exp(0.1) + 1.0 + math.exp(0.2)) / 3
    assert float(value) == pytest.approx(expected, rel=1e-7)
    data = {"token_mask": mask, "sample_mask": torch.ones(2, dtype=torch.float64),
            "advantages": torch.zeros(2, 3, dtype=torch.float64), "prev_logprobs": prev,
            "generation_logprobs": gen}
    _, m = ClippedPGLoss(reference_policy_kl_penalty=0.0)(
        next_token_logprobs=prev[:, 1:].clone(), data=data, global_valid_seqs=2.0, global_valid_toks=3.0)
    assert m["token_mult_prob_error"] == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="share one shape"):
        token_mult_prob_error(gen, prev[:, 1:], mask)
