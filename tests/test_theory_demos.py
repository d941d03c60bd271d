"""rlref.theory_demos: the exact/Monte Carlo models behind the theory pages."""

from __future__ import annotations

import math

import pytest
import torch

from rlref.losses import NLLLoss
from rlref.theory_demos import (
    BASELINES,
    TabularSequencePolicy,
    cross_entropy_decomposition,
    discretised_gaussian,
    fit_discretised_gaussian,
    importance_weight_stats,
    kl_estimator_stats,
    microbatch_reductions,
    pg_estimates,
    pg_variance_exact,
    sft_token_mask,
)


@pytest.fixture
def toy():
    pol = TabularSequencePolicy(3, 3)
    theta = pol.init_theta(0.7, torch.Generator().manual_seed(1))
    rewards = ((pol.sequences == 0).sum(-1) >= 2).double()
    return pol, theta, rewards


def test_sequence_probs_are_a_distribution_and_factorise_over_tokens(toy):
    pol, theta, _ = toy
    probs = pol.sequence_probs(theta)
    assert probs.shape == (27,)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    # log pi(y) = sum_t log pi(y_t | y_<t): check one sequence by hand
    y = pol.sequences[14]
    logp = torch.log_softmax(theta, -1)
    s0, s1, s2 = 0, 1 + y[0], 1 + 3 + 3 * y[0] + y[1]
    manual = logp[s0, y[0]] + logp[s1, y[1]] + logp[s2, y[2]]
    assert float(probs[14].log()) == pytest.approx(float(manual), abs=1e-12)


def test_policy_gradient_theorem_matches_autograd(toy):
    pol, theta, rewards = toy
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    torch.testing.assert_close((probs * rewards) @ scores, pol.exact_gradient(theta, rewards),
                               rtol=0, atol=1e-12)


def test_closed_form_scores_match_autograd(toy):
    pol, theta, _ = toy
    scores = pol.scores(theta)
    for i in (0, 5, 26):
        th = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(pol.token_logprobs(th)[i].sum(), th)
        torch.testing.assert_close(scores[i], g.reshape(-1), rtol=0, atol=1e-12)


def test_expected_score_is_zero_so_a_constant_baseline_is_unbiased(toy):
    pol, theta, _ = toy
    expected_score = pol.sequence_probs(theta) @ pol.scores(theta)
    assert float(expected_score.abs().max()) < 1e-12


def test_surrogate_is_first_order_exact_and_drifts_far_away(toy):
    pol, theta, rewards = toy
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pol.surrogate(theta, th, rewards), th)
    torch.testing.assert_close(g.reshape(-1), pol.exact_gradient(theta, rewards), rtol=0, atol=1e-12)
    assert float(pol.surrogate(theta, theta, rewards)) == pytest.approx(0.0, abs=1e-14)
    d = pol.exact_gradient(theta, rewards).reshape(theta.shape)
    far = theta + 8 * d / d.norm()
    gain = float(pol.objective(far, rewards) - pol.objective(theta, rewards))
    gap = float(pol.surrogate(theta, far, rewards)) - gain
    assert abs(gap) > 0.05


def test_no_baseline_monte_carlo_variance_matches_the_exact_formula(toy):
    pol, theta, rewards = toy
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    gen = torch.Generator().manual_seed(0)
    for baseline, b in (("none", 0.0), ("oracle", float((probs * rewards).sum()))):
        est = pg_estimates(probs, scores, rewards, 4, 40_000, baseline, gen)
        mc = float((est - est.mean(0)).square().sum(-1).mean())
        assert mc == pytest.approx(pg_variance_exact(probs, scores, rewards, 4, b), rel=0.05)


def test_unbiased_baselines_and_the_group_mean_shrinkage(toy):
    pol, theta, rewards = toy
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    g = pol.exact_gradient(theta, rewards)
    G = 4
    for baseline in BASELINES:
        est = pg_estimates(probs, scores, rewards, G, 40_000, baseline, torch.Generator().manual_seed(3))
        slope = float(est.mean(0) @ g / g.square().sum())
        expected = (G - 1) / G if baseline == "group_mean" else 1.0
        assert slope == pytest.approx(expected, abs=0.03), baseline


def _enumerated_variance(probs, scores, rewards, G, baseline):
    """E||g_hat - E g_hat||^2 by summing over all N^G ordered groups (tiny problems only)."""
    N = probs.numel()
    groups = torch.cartesian_prod(*[torch.arange(N)] * G).reshape(-1, G)
    weight = probs[groups].prod(-1)
    r = rewards[groups]
    b = (r.sum(1, keepdim=True) - r) / (G - 1) if baseline == "leave_one_out" else r.mean(1, keepdim=True)
    est = (((r - b) / G)[..., None] * scores[groups]).sum(1)
    mean = weight @ est
    return float(weight @ (est - mean).square().sum(-1))


@pytest.mark.parametrize("G", [2, 3, 4])
def test_leave_one_out_and_group_mean_variances_match_enumeration(G):
    pol = TabularSequencePolicy(2, 3)
    theta = pol.init_theta(0.8, torch.Generator().manual_seed(5))
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 0.0, 1.0, 0.3], dtype=torch.float64)  # not only 0/1
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    for baseline in ("leave_one_out", "group_mean"):
        exact = pg_variance_exact(probs, scores, rewards, G, baseline)
        assert exact == pytest.approx(_enumerated_variance(probs, scores, rewards, G, baseline), rel=1e-10)
    # never below the oracle constant baseline, equal in the limit: the excess is c / (G - 1)
    J = float((probs * rewards).sum())
    ratio = pg_variance_exact(probs, scores, rewards, G, "leave_one_out") / pg_variance_exact(
        probs, scores, rewards, G, J)
    assert ratio > 1.0


def test_leave_one_out_monte_carlo_variance_matches_the_exact_formula(toy):
    pol, theta, rewards = toy
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    for baseline in ("leave_one_out", "group_mean"):
        est = pg_estimates(probs, scores, rewards, 6, 40_000, baseline, torch.Generator().manual_seed(4))
        mc = float((est - est.mean(0)).square().sum(-1).mean())
        assert mc == pytest.approx(pg_variance_exact(probs, scores, rewards, 6, baseline), rel=0.05)


def test_pg_variance_exact_rejects_bad_input(toy):
    pol, theta, rewards = toy
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    with pytest.raises(ValueError, match="baseline"):
        pg_variance_exact(probs, scores, rewards, 4, "mean")
    with pytest.raises(ValueError, match="group_size >= 2"):
        pg_variance_exact(probs, scores, rewards, 1, "leave_one_out")


def test_group_mean_estimate_is_exactly_a_shrunk_leave_one_out_estimate(toy):
    pol, theta, rewards = toy
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    G = 5
    loo = pg_estimates(probs, scores, rewards, G, 50, "leave_one_out", torch.Generator().manual_seed(7))
    mean = pg_estimates(probs, scores, rewards, G, 50, "group_mean", torch.Generator().manual_seed(7))
    torch.testing.assert_close(mean, loo * (G - 1) / G, rtol=1e-12, atol=1e-12)


def test_pg_estimates_rejects_bad_input(toy):
    pol, theta, rewards = toy
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    with pytest.raises(ValueError, match="baseline"):
        pg_estimates(probs, scores, rewards, 4, 10, "mean")
    with pytest.raises(ValueError, match="group_size >= 2"):
        pg_estimates(probs, scores, rewards, 1, 10, "leave_one_out")
    with pytest.raises(ValueError, match="scores"):
        pg_estimates(probs, scores[:3], rewards, 4, 10, "none")
    with pytest.raises(ValueError, match="theta must have shape"):
        pol.sequence_probs(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="too many"):
        TabularSequencePolicy(50, 4)


def test_importance_weights_have_mean_one_and_the_exact_variance():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(8, generator=gen)
    p = q + 0.4 * torch.randn(8, generator=gen)
    for T in (1, 4):
        st = importance_weight_stats(p, q, T, 100_000, gen)
        assert st["mc_mean"] == pytest.approx(1.0, abs=0.02)
        assert st["mc_var"] == pytest.approx(st["var_exact"], rel=0.1)
        assert st["var_exact"] >= st["var_lower_bound"] > 0
    one = importance_weight_stats(p, q, 1, 10, gen)
    four = importance_weight_stats(p, q, 4, 10, gen)
    assert four["kl"] == pytest.approx(4 * one["kl"], rel=1e-12)
    assert four["var_exact"] == pytest.approx((1 + one["var_exact"]) ** 4 - 1, rel=1e-12)


def test_identical_policies_give_unit_weights():
    logits = torch.tensor([0.1, -1.0, 2.0])
    st = importance_weight_stats(logits, logits, 3, 100, torch.Generator().manual_seed(0))
    assert st["kl"] == pytest.approx(0.0, abs=1e-12)
    assert st["mc_var"] == pytest.approx(0.0, abs=1e-12)
    assert st["ess_fraction"] == pytest.approx(1.0, abs=1e-12)


def test_kl_estimators_k1_k3_unbiased_k2_biased_and_signs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10, generator=gen)
    ref = logits + 1.5 * torch.randn(10, generator=gen)
    st = kl_estimator_stats(logits, ref, 200_000, gen)
    true_kl = st["true_kl"]
    for k in ("k1", "k3"):
        se = st[k]["std"] / math.sqrt(200_000)
        assert abs(st[k]["bias"]) < 5 * se, k
    assert st["k2"]["bias"] > 0.1 * true_kl
    assert st["k1"]["frac_negative"] > 0.05
    assert st["k2"]["frac_negative"] == 0.0 and st["k3"]["frac_negative"] == 0.0
    assert st["k3"]["std"] < st["k1"]["std"]


def test_kl_estimator_exact_moments_match_monte_carlo():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(12, generator=gen)
    st = kl_estimator_stats(logits, logits + 0.8 * torch.randn(12, generator=gen), 200_000, gen)
    assert st["k1"]["exact_bias"] == pytest.approx(0.0, abs=1e-12)
    assert st["k3"]["exact_bias"] == pytest.approx(0.0, abs=1e-12)
    assert st["k3"]["exact_frac_negative"] == 0.0 and st["k2"]["exact_frac_negative"] == 0.0
    assert 0.0 < st["k1"]["exact_frac_negative"] < 1.0
    for k in ("k1", "k2", "k3"):
        se = st[k]["std"] / math.sqrt(200_000)
        assert abs(st[k]["bias"] - st[k]["exact_bias"]) < 5 * se, k
        assert st[k]["std"] == pytest.approx(st[k]["exact_std"], rel=0.03), k
        assert st[k]["frac_negative"] == pytest.approx(st[k]["exact_frac_negative"], abs=0.01), k


def test_k1_spread_is_about_sqrt_two_kl_for_close_policies():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(16, generator=gen)
    st = kl_estimator_stats(logits, logits + 0.1 * torch.randn(16, generator=gen), 100_000, gen)
    assert st["k1"]["std"] == pytest.approx(math.sqrt(2 * st["true_kl"]), rel=0.05)
    assert st["k1"]["std"] > 10 * st["true_kl"]


def test_kl_estimators_are_zero_for_identical_policies():
    logits = torch.tensor([0.3, 0.2, -0.5])
    st = kl_estimator_stats(logits, logits, 50, torch.Generator().manual_seed(0))
    for k in ("k1", "k2", "k3"):
        assert st[k]["mean"] == pytest.approx(0.0, abs=1e-12)


def _nll_batch(lengths, S=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B = len(lengths)
    curr = -torch.rand(B, S - 1, generator=gen, dtype=torch.float64) * 3
    token_mask = torch.zeros(B, S, dtype=torch.float64)
    for b, n in enumerate(lengths):
        token_mask[b, 1 : 1 + n] = 1.0
    return curr, {"token_mask": token_mask, "sample_mask": torch.ones(B, dtype=torch.float64)}


def test_microbatch_global_counts_sum_to_the_full_batch_and_local_means_do_not():
    curr, data = _nll_batch([1, 2, 8, 9])
    out = microbatch_reductions(NLLLoss(), curr, data, 2)
    assert out["global_sum"] == pytest.approx(out["full"], rel=1e-12)
    assert abs(out["local_mean"] - out["full"]) > 1e-3
    # equal-length rows and equal micro-batches: the two agree
    curr, data = _nll_batch([4, 4, 4, 4])
    out = microbatch_reductions(NLLLoss(), curr, data, 2)
    assert out["local_mean"] == pytest.approx(out["full"], rel=1e-9)


def test_microbatch_reductions_rejects_bad_input():
    curr, data = _nll_batch([1, 2])
    with pytest.raises(ValueError, match="exceeds"):
        microbatch_reductions(NLLLoss(), curr, data, 3)
    with pytest.raises(ValueError, match="sample_mask"):
        microbatch_reductions(NLLLoss(), curr, {"token_mask": data["token_mask"]}, 1)


def test_cross_entropy_is_entropy_plus_forward_kl():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=gen, dtype=torch.float64), -1)
    logpi = torch.log_softmax(torch.randn(6, generator=gen, dtype=torch.float64), -1)
    d = cross_entropy_decomposition(p, logpi)
    assert d["cross_entropy"] == pytest.approx(d["entropy"] + d["kl"], rel=1e-12)
    assert d["kl"] > 0
    same = cross_entropy_decomposition(p, p.log())
    assert same["kl"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="probability vector"):
        cross_entropy_decomposition(p * 2, logpi)


def test_forward_kl_covers_both_modes_reverse_kl_picks_one():
    V = 21
    x = torch.arange(V, dtype=torch.float64)
    p = torch.exp(-((x - 5) ** 2) / 2) + torch.exp(-((x - 15) ** 2) / 2)
    p = p / p.sum()
    fwd = fit_discretised_gaussian(p, "forward", init_mean=7.0)
    rev = fit_discretised_gaussian(p, "reverse", init_mean=7.0)
    assert fwd["mean"] == pytest.approx(10.0, abs=0.5) and fwd["std"] > 3.0
    assert rev["mean"] == pytest.approx(5.0, abs=0.5) and rev["std"] < 1.5
    bump = discretised_gaussian(torch.tensor(3.0), torch.tensor(0.0), V)
    assert float(bump.exp().sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="divergence"):
        fit_discretised_gaussian(p, "jensen", 0.0)


def test_sft_token_mask_trains_on_assistant_turns_only():
    turns = [("system", 3), ("user", 2), ("assistant", 4), ("user", 2), ("assistant", 3)]
    m = sft_token_mask(turns)
    assert m.tolist() == [0] * 5 + [1] * 4 + [0] * 2 + [1] * 3
    final = sft_token_mask(turns, only_unmask_final=True)
    assert final.tolist() == [0] * 11 + [1] * 3
    both = sft_token_mask(turns, roles_to_train_on=["assistant", "user"])
    assert both.sum() == 11
    with pytest.raises(TypeError, match="single string"):
        sft_token_mask(turns, roles_to_train_on="assistant")
    with pytest.raises(ValueError, match="num_tokens"):
        sft_token_mask([("user", 0)])
