"""Tests for rlref.custom_losses: the entropy-bonus policy loss written on the LossFunction protocol."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_batches import global_counts, loss_and_grad, random_pg_batch

from rlref.custom_losses import EntropyBonusPGLoss, entropy_surrogate
from rlref.lab import VOCAB_SIZE, GRPOConfig, PolicyConfig, TinyCausalLM, grpo_train, make_task
from rlref.losses import ClippedPGLoss, LossInputType, LossType

FAST = settings(max_examples=40, deadline=None)
F64 = torch.float64


def test_protocol_attributes():
    loss_fn = EntropyBonusPGLoss(0.05)
    assert loss_fn.loss_type is LossType.TOKEN_LEVEL
    assert loss_fn.input_type is LossInputType.LOGPROB


def test_surrogate_gradient_is_minus_the_exact_entropy_gradient():
    # Enumerate a categorical exactly: sum_y pi(y) * d/dtheta [sg(log pi(y)) log pi(y)] = -dH/dtheta.
    theta = torch.tensor([0.3, -1.2, 2.0, 0.1, -0.4], dtype=F64, requires_grad=True)
    logp = torch.log_softmax(theta, 0)
    surrogate = (logp.exp().detach() * logp.detach() * logp).sum()
    (g_sur,) = torch.autograd.grad(surrogate, theta)
    theta2 = theta.detach().clone().requires_grad_(True)
    lp2 = torch.log_softmax(theta2, 0)
    entropy = -(lp2.exp() * lp2).sum()
    (g_h,) = torch.autograd.grad(entropy, theta2)
    torch.testing.assert_close(g_sur, -g_h, rtol=1e-12, atol=1e-12)


def test_surrogate_hand_value_and_gradient():
    curr = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    value = entropy_surrogate(curr, mask, 3.0)
    # (1 + 4 + 0.25) / 3
    assert float(value.detach()) == pytest.approx(5.25 / 3, rel=1e-8)
    value.backward()
    torch.testing.assert_close(curr.grad, torch.tensor([[-1 / 3, -2 / 3], [-0.5 / 3, 0.0]], dtype=F64),
                               rtol=1e-7, atol=1e-12)


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), S=st.integers(2, 9),
       kl=st.sampled_from([0.0, 0.05]))
def test_zero_coefficient_is_exactly_clipped_pg(seed, B, S, kl):
    curr, data = random_pg_batch(seed, B, S, prev_noise=0.3)
    GS, GT = global_counts(data)
    bonus_fn = EntropyBonusPGLoss(0.0, reference_policy_kl_penalty=kl)
    a_loss, a_grad, _ = loss_and_grad(bonus_fn, curr, data, GS, GT)
    b_loss, b_grad, _ = loss_and_grad(ClippedPGLoss(reference_policy_kl_penalty=kl), curr, data, GS, GT)
    torch.testing.assert_close(a_loss, b_loss, rtol=0, atol=0)
    torch.testing.assert_close(a_grad, b_grad, rtol=0, atol=0)


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), S=st.integers(2, 9),
       coef=st.floats(0.001, 1.0))
def test_bonus_adds_coef_times_surrogate_to_loss_and_gradient(seed, B, S, coef):
    curr, data = random_pg_batch(seed, B, S, prev_noise=0.3)
    GS, GT = global_counts(data)
    a_loss, a_grad, m = loss_and_grad(EntropyBonusPGLoss(coef), curr, data, GS, GT)
    b_loss, b_grad, _ = loss_and_grad(ClippedPGLoss(), curr, data, GS, GT)
    mask = data["token_mask"][:, 1:] * data["sample_mask"][:, None]
    torch.testing.assert_close(a_loss - b_loss, coef * (curr**2 * mask).sum() / (GT + 1e-8),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a_grad - b_grad, coef * curr * mask / (GT + 1e-8), rtol=1e-9, atol=1e-12)
    assert m["lab/sampled_entropy"] == pytest.approx(float(-(curr * mask).sum() / (GT + 1e-8)), rel=1e-9)


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(2, 8), S=st.integers(3, 9),
       coef=st.sampled_from([0.01, 0.3]), kl=st.sampled_from([0.0, 0.05]),
       cuts=st.lists(st.integers(1, 7), max_size=3))
def test_microbatch_losses_and_gradients_add_up_to_the_full_batch(seed, B, S, coef, kl, cuts):
    curr, data = random_pg_batch(seed, B, S, prev_noise=0.3)
    GS, GT = global_counts(data)
    loss_fn = EntropyBonusPGLoss(coef, reference_policy_kl_penalty=kl)
    full_loss, full_grad, full_m = loss_and_grad(loss_fn, curr, data, GS, GT)
    edges = [0, *sorted({c for c in cuts if 0 < c < B}), B]
    total, grads, ent, bonus = torch.zeros((), dtype=F64), [], 0.0, 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = {k: v[lo:hi] for k, v in data.items()}
        loss, grad, m = loss_and_grad(loss_fn, curr[lo:hi], part, GS, GT)
        total = total + loss
        ent += m["lab/sampled_entropy"]
        bonus += m["lab/entropy_bonus"]
        grads.append(grad)
    torch.testing.assert_close(total, full_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat(grads), full_grad, rtol=1e-10, atol=1e-12)
    assert ent == pytest.approx(full_m["lab/sampled_entropy"], rel=1e-10)
    assert bonus == pytest.approx(full_m["lab/entropy_bonus"], rel=1e-10, abs=1e-14)


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(2, 6), S=st.integers(3, 8))
def test_each_row_gradient_depends_on_that_row_only(seed, B, S):
    # Packing needs batch independence: one row's gradient, for fixed global counts, ignores the others.
    curr, data = random_pg_batch(seed, B, S, prev_noise=0.3)
    GS, GT = global_counts(data)
    loss_fn = EntropyBonusPGLoss(0.2)
    _, full_grad, _ = loss_and_grad(loss_fn, curr, data, GS, GT)
    for b in range(B):
        part = {k: v[b : b + 1] for k, v in data.items()}
        _, g, _ = loss_and_grad(loss_fn, curr[b : b + 1], part, GS, GT)
        torch.testing.assert_close(g[0], full_grad[b], rtol=1e-12, atol=1e-14)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="entropy_coef"):
        EntropyBonusPGLoss(-0.1)
    with pytest.raises(ValueError, match="entropy_coef"):
        EntropyBonusPGLoss(True)
    with pytest.raises(ValueError, match="token_level_loss"):
        EntropyBonusPGLoss(0.1, token_level_loss=False)
    with pytest.raises(ValueError, match="mask"):
        entropy_surrogate(torch.zeros(2, 3), torch.zeros(2, 2), 1.0)


def test_replace_changes_coefficient_and_keys():
    loss_fn = EntropyBonusPGLoss(0.1).replace(entropy_coef=0.2, ratio_clip_max=0.28)
    assert loss_fn.entropy_coef == 0.2 and loss_fn.config.ratio_clip_max == 0.28


def test_lab_run_with_the_custom_loss_keeps_entropy_higher():
    cfg = PolicyConfig(VOCAB_SIZE, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    ents = {}
    for coef in (0.0, 0.5):
        policy = TinyCausalLM(cfg, seed=0)
        h = grpo_train(policy, make_task("last"),
                       GRPOConfig(num_prompts_per_step=8, num_generations_per_prompt=4, max_num_steps=8,
                                  seed=0, loss_fn=EntropyBonusPGLoss(coef)))
        assert all(s["lab/nonfinite"] == 0.0 for s in h)
        ents[coef] = h.mean("lab/entropy", first=None, last=4)
    assert ents[0.5] > ents[0.0]
