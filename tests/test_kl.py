"""rlref.kl.calculate_kl: estimators, clamps, importance weights, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from rlref.advantages import gae_advantages
from rlref.kl import (
    calculate_kl,
    enumerate_sequences,
    expected_score_gradient,
    num_prefixes,
    per_position_kl,
    sequence_kl,
    tabular_logprobs,
)


def _lp(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kl_type", "formula"),
    [
        ("k1", lambda x: -x),
        ("k2", lambda x: 0.5 * x * x),
        ("k3", lambda x: math.exp(x) - 1 - x),
    ],
)
def test_estimators_follow_their_formulas_in_logr(kl_type, formula):
    logprobs = _lp([-1.0, -2.5, -0.1, -3.0])
    ref = _lp([-1.5, -0.5, -0.1, -4.0])
    kl = calculate_kl(logprobs, ref, kl_type, None, None)
    expected = [formula(r - p) for r, p in zip(ref.tolist(), logprobs.tolist(), strict=True)]
    assert kl.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_k1_and_k3_expectations_equal_the_exact_kl_while_k2_does_not():
    # Exact expectation over a categorical policy: E_{x~pi}[k(x)] = sum_x pi(x) k(x).
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(50, generator=g, dtype=torch.float64) * 2, -1)
    logq = torch.log_softmax(torch.randn(50, generator=g, dtype=torch.float64) * 2, -1)
    p = logp.exp()
    exact = (p * (logp - logq)).sum().item()
    expect = {t: (p * calculate_kl(logp, logq, t, None, None)).sum().item() for t in ("k1", "k2", "k3")}
    assert expect["k1"] == pytest.approx(exact, rel=1e-10)
    assert expect["k3"] == pytest.approx(exact, rel=1e-10)
    assert abs(expect["k2"] - exact) > 1e-3 * exact  # k2 is a biased estimator


def test_input_clamp_caps_logr_and_zeroes_its_gradient():
    logprobs = _lp([0.0, 0.0, 0.0]).requires_grad_(True)
    ref = _lp([-5.0, 0.5, 5.0])
    kl = calculate_kl(logprobs, ref, "k1", input_clamp_value=1.0, output_clamp_value=None)
    assert kl.tolist() == [1.0, -0.5, -1.0]
    kl.sum().backward()
    assert logprobs.grad.tolist() == [0.0, 1.0, 0.0]


def test_output_clamp_caps_the_estimate():
    kl = calculate_kl(_lp([0.0, 0.0]), _lp([-6.0, 0.2]), "k2", None, output_clamp_value=2.0)
    assert kl.tolist() == pytest.approx([2.0, 0.02], rel=1e-12)


def test_none_disables_both_clamps():
    kl = calculate_kl(_lp([0.0]), _lp([30.0]), "k1", None, None)
    assert kl.item() == -30.0


def test_importance_weight_multiplies_before_the_output_clamp():
    w = _lp([3.0, 0.5])
    kl = calculate_kl(_lp([0.0, 0.0]), _lp([-1.0, -1.0]), "k1", None, 2.0, importance_sampling_weights=w)
    assert kl.tolist() == [2.0, 0.5]  # 3*1 = 3 clamped to 2; 0.5*1 = 0.5


def test_importance_weight_is_stop_gradiented_where_the_input_clamp_is_active():
    w = _lp([1.0, 1.0]).requires_grad_(True)
    kl = calculate_kl(_lp([0.0, 0.0]), _lp([-5.0, -0.5]), "k1", 1.0, None, importance_sampling_weights=w)
    kl.sum().backward()
    assert w.grad.tolist() == [0.0, 0.5]  # clamped entry: no gradient; free entry: dk/dw = k1 = 0.5


def test_default_clamps_are_20_and_10():
    kl = calculate_kl(_lp([0.0]), _lp([-25.0]), "k1")  # k1 = 20 after the input clamp, then 10
    assert kl.item() == 10.0


def test_rejects_unknown_kl_type():
    with pytest.raises(ValueError, match="kl_type must be one of .* got 'k4'"):
        calculate_kl(_lp([0.0]), _lp([0.0]), "k4")


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"logprobs \(2,\) and logprobs_reference \(3,\)"):
        calculate_kl(_lp([0.0, 0.0]), _lp([0.0, 0.0, 0.0]))


def test_rejects_non_float_and_non_tensor_inputs():
    with pytest.raises(TypeError, match="logprobs must be a floating tensor"):
        calculate_kl(torch.zeros(2, dtype=torch.int64), _lp([0.0, 0.0]))
    with pytest.raises(TypeError, match="logprobs_reference must be a torch.Tensor"):
        calculate_kl(_lp([0.0]), [0.0])


@pytest.mark.parametrize("name", ["input_clamp_value", "output_clamp_value"])
def test_rejects_non_positive_clamps(name):
    with pytest.raises(ValueError, match=f"{name} must be > 0 or None, got 0"):
        calculate_kl(_lp([0.0]), _lp([0.0]), **{name: 0})
    with pytest.raises(TypeError, match=f"{name} must be a positive number or None"):
        calculate_kl(_lp([0.0]), _lp([0.0]), **{name: "5"})


def test_rejects_bad_importance_weights():
    with pytest.raises(ValueError, match=r"importance_sampling_weights \(1,\) must have the shape"):
        calculate_kl(_lp([0.0, 0.0]), _lp([0.0, 0.0]), importance_sampling_weights=_lp([1.0]))
    with pytest.raises(TypeError, match="importance_sampling_weights must be a floating tensor"):
        calculate_kl(_lp([0.0]), _lp([0.0]), importance_sampling_weights=torch.ones(1, dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# The exact sequence model
# --------------------------------------------------------------------------------------------------


def _tables(V=3, T=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = num_prefixes(V, T)
    return (torch.randn(C, V, generator=g, dtype=torch.float64).requires_grad_(True),
            torch.randn(C, V, generator=g, dtype=torch.float64))


def test_enumerate_sequences_and_prefix_count():
    seqs = enumerate_sequences(2, 3)
    assert seqs.tolist() == [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    assert num_prefixes(3, 3) == 1 + 3 + 9
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        enumerate_sequences(1, 3)
    with pytest.raises(ValueError, match="too many to enumerate"):
        enumerate_sequences(50, 5)


def test_tabular_policy_is_a_distribution_over_sequences_and_uses_one_row_per_prefix():
    logits, _ = _tables()
    seqs = enumerate_sequences(3, 3)
    lp, dist = tabular_logprobs(logits, seqs)
    assert lp.sum(1).exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # the first token's distribution is row 0; after first token 2 it is row 1 + 2 = 3
    assert torch.allclose(dist[0, 0], torch.log_softmax(logits[0], -1))
    row = seqs[:, 0] == 2
    assert torch.allclose(dist[row, 1], torch.log_softmax(logits[3], -1).expand(int(row.sum()), 3))
    with pytest.raises(ValueError, match="need num_prefixes = 13"):
        tabular_logprobs(logits[:5], seqs)
    with pytest.raises(TypeError, match="sequences must be an integer"):
        tabular_logprobs(logits, seqs.double())


def test_sequence_and_per_position_kl_agree_in_value_but_not_in_gradient():
    logits, ref = _tables()
    seq, pos = sequence_kl(logits, ref, 3), per_position_kl(logits, ref, 3)
    assert seq.item() == pytest.approx(pos.item(), rel=1e-12)  # chain rule of the KL
    g_seq, = torch.autograd.grad(seq, logits)
    g_pos, = torch.autograd.grad(pos, logits)
    assert (g_seq - g_pos).abs().max() > 1e-2  # the future-KL terms
    # at the last position there is no future: the gradients agree on the last-level rows
    last = slice(num_prefixes(3, 2), num_prefixes(3, 3))
    assert torch.allclose(g_seq[last], g_pos[last], atol=1e-12)


def test_k1_reward_to_go_gives_the_sequence_gradient_and_own_token_k1_the_per_position_one():
    logits, ref = _tables(seed=1)
    seqs = enumerate_sequences(3, 3)
    lp, _ = tabular_logprobs(logits, seqs)
    lq, _ = tabular_logprobs(ref, seqs)
    N = seqs.shape[0]
    adv, _ = gae_advantages(torch.zeros(N, dtype=torch.float64), torch.ones(N, 3, dtype=torch.float64),
                            torch.zeros(N, 3, dtype=torch.float64), gae_lambda=1.0, gae_gamma=1.0,
                            normalize_advantages=False, use_kl_in_reward=True,
                            reference_policy_kl_penalty=1.0, reference_policy_kl_type="k1",
                            logprobs_policy=lp.detach(), logprobs_reference=lq)
    g_seq, = torch.autograd.grad(sequence_kl(logits, ref, 3), logits)
    g_pos, = torch.autograd.grad(per_position_kl(logits, ref, 3), logits)
    assert torch.allclose(-expected_score_gradient(logits, seqs, adv), g_seq, atol=1e-12)
    assert torch.allclose(expected_score_gradient(logits, seqs, lp.detach() - lq), g_pos, atol=1e-12)


def test_expected_score_gradient_of_a_constant_weight_is_zero_and_checks_its_input():
    logits, _ = _tables()
    seqs = enumerate_sequences(3, 3)
    g = expected_score_gradient(logits, seqs, torch.full((27, 3), 5.0, dtype=torch.float64))
    assert g.abs().max() < 1e-12  # E[grad log pi] = 0
    with pytest.raises(ValueError, match="token_weights must be a tensor of shape"):
        expected_score_gradient(logits, seqs, torch.zeros(27, 2))
    with pytest.raises(ValueError, match="must be every sequence"):
        expected_score_gradient(logits, seqs[:5], torch.zeros(5, 3))
