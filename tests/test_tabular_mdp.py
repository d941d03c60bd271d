"""rlref.tabular_mdp: exact policy evaluation, the policy-gradient theorem, the performance-difference
lemma, the TRPO surrogate bound and exact softmax policy gradient."""

from __future__ import annotations

import math

import pytest
import torch

from rlref.advantages import grpo_advantages
from rlref.tabular_mdp import (
    TabularMDP,
    advantage,
    autograd_gradient,
    bandit,
    bandit_smoothness,
    evaluate,
    expected_group_gradient,
    lojasiewicz_constant,
    max_kl,
    max_tv,
    mdp_smoothness,
    objective,
    occupancy,
    optimal_policy,
    performance_difference,
    pg_theorem_gradient,
    random_mdp,
    softmax_pg,
    softmax_policy,
    surrogate,
    surrogate_bound,
)
from rlref.theory_demos import TabularSequencePolicy

F64 = torch.float64
HALF = torch.tensor([0.5, 0.5])
UNIFORM = torch.full((2, 2, 2), 0.5)


@pytest.fixture
def mdp():
    return random_mdp(4, 3, 0.8, torch.Generator().manual_seed(3))


def _theta(seed: int, scale: float = 1.0, shape=(4, 3)) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rollout_value(mdp: TabularMDP, pi: torch.Tensor, horizon: int = 400) -> torch.Tensor:
    """V by summing gamma^t E[r_t] forward in time (independent of the linear solve)."""
    dist = torch.eye(mdp.num_states, dtype=F64)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.transitions)
    r_pi = (pi * mdp.rewards).sum(-1)
    V = torch.zeros(mdp.num_states, dtype=F64)
    for t in range(horizon):
        V += mdp.gamma**t * dist @ r_pi
        dist = dist @ P_pi
    return V


def test_evaluation_matches_the_discounted_sum_and_bellman(mdp):
    pi = softmax_policy(_theta(0))
    V, Q = evaluate(mdp, pi)
    assert torch.allclose(V, _rollout_value(mdp, pi), atol=1e-12)
    assert torch.allclose((pi * Q).sum(-1), V, atol=1e-12)
    assert torch.allclose((pi * advantage(mdp, pi)).sum(-1), torch.zeros(4, dtype=F64), atol=1e-12)
    assert float(objective(mdp, pi)) == pytest.approx(float(mdp.initial @ V), abs=1e-14)


def test_occupancy_is_the_discounted_state_distribution(mdp):
    pi = softmax_policy(_theta(1))
    d = occupancy(mdp, pi)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.transitions)
    forward, dist = torch.zeros(4, dtype=F64), mdp.initial.clone()
    for t in range(400):
        forward += (1 - mdp.gamma) * mdp.gamma**t * dist
        dist = dist @ P_pi
    assert torch.allclose(d, forward, atol=1e-12)
    assert float(d.sum()) == pytest.approx(1.0, abs=1e-12)
    # J = 1/(1-gamma) E_{s~d, a~pi}[r(s, a)]
    assert float(objective(mdp, pi)) == pytest.approx(float(d @ (pi * mdp.rewards).sum(-1)) / 0.2, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_gradient_theorem_matches_autograd(mdp, seed):
    theta = _theta(seed, 2.0)
    assert torch.allclose(autograd_gradient(mdp, theta), pg_theorem_gradient(mdp, theta), atol=1e-12)
    # and a finite difference of the objective
    e = torch.zeros_like(theta)
    e[1, 2] = 1e-6
    fd = (objective(mdp, softmax_policy(theta + e)) - objective(mdp, softmax_policy(theta - e))) / 2e-6
    assert float(fd) == pytest.approx(float(pg_theorem_gradient(mdp, theta)[1, 2]), abs=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_performance_difference_lemma_is_exact(mdp, seed):
    pi_old, pi_new = softmax_policy(_theta(seed)), softmax_policy(_theta(seed + 10, 3.0))
    out = performance_difference(mdp, pi_new, pi_old)
    assert out["gain"] == pytest.approx(out["pdl"], abs=1e-12)
    assert abs(out["gain"]) > 1e-3  # a real change, not 0 = 0
    # the surrogate uses the old occupancy instead: not the same number far from pi_old
    assert abs(float(surrogate(mdp, pi_new, pi_old)) - out["gain"]) > 1e-6


def test_surrogate_matches_the_objective_to_first_order(mdp):
    theta = _theta(4)
    pi = softmax_policy(theta)
    assert float(surrogate(mdp, pi, pi)) == pytest.approx(0.0, abs=1e-14)
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(surrogate(mdp, softmax_policy(th), pi), th)
    assert torch.allclose(g, pg_theorem_gradient(mdp, theta), atol=1e-12)


@pytest.mark.parametrize("scale", [0.01, 0.1, 0.5, 2.0, 10.0])
def test_trpo_bound_holds_and_is_attained_to_second_order(mdp, scale):
    gen = torch.Generator().manual_seed(int(scale * 100))
    for _ in range(20):
        theta = torch.randn(4, 3, generator=gen, dtype=F64)
        pi, pi_new = softmax_policy(theta), softmax_policy(theta + scale * torch.randn(4, 3, generator=gen,
                                                                                        dtype=F64))
        b = surrogate_bound(mdp, pi_new, pi)
        assert abs(b["gain"] - b["surrogate"]) <= b["penalty"] + 1e-12
        assert b["penalty"] <= b["penalty_kl"] + 1e-12  # Pinsker: alpha^2 <= KL_max / 2
        assert b["gain"] >= b["lower"] - 1e-12
        assert b["alpha"] == pytest.approx(max_tv(pi_new, pi))
        assert b["kl_max"] == pytest.approx(max_kl(pi, pi_new))


def test_trpo_bound_can_fail_for_a_too_small_constant(mdp):
    """The bound is not vacuous: a tenth of the penalty is violated somewhere on large moves."""
    gen = torch.Generator().manual_seed(5)
    worst = 0.0
    for _ in range(200):
        theta = torch.randn(4, 3, generator=gen, dtype=F64)
        b = surrogate_bound(mdp, softmax_policy(theta + 3 * torch.randn(4, 3, generator=gen, dtype=F64)),
                            softmax_policy(theta))
        worst = max(worst, abs(b["gain"] - b["surrogate"]) / b["penalty"])
    assert 0.01 < worst <= 1.0


def test_bandit_is_a_one_state_mdp():
    r = torch.tensor([0.2, 0.9, 0.5], dtype=F64)
    b = bandit(r)
    theta = torch.tensor([[0.3, -1.0, 0.5]], dtype=F64)
    pi = softmax_policy(theta)
    assert float(objective(b, pi)) == pytest.approx(float(pi[0] @ r), abs=1e-15)
    assert torch.allclose(pg_theorem_gradient(b, theta)[0], pi[0] * (r - pi[0] @ r), atol=1e-15)
    assert bandit_smoothness(r) == pytest.approx(3 * 0.7)


def test_bandit_smoothness_constant_bounds_the_hessian():
    gen = torch.Generator().manual_seed(6)
    for _ in range(50):
        r = torch.rand(5, generator=gen, dtype=F64)
        theta = 3 * torch.randn(5, generator=gen, dtype=F64)
        H = torch.autograd.functional.hessian(lambda t, r=r: torch.softmax(t, 0) @ r, theta)
        assert float(torch.linalg.eigvalsh(H).abs().max()) <= bandit_smoothness(r) + 1e-12


def test_softmax_pg_matches_the_torch_gradient_and_ascends(mdp):
    L = mdp_smoothness(mdp.gamma)
    out = softmax_pg(mdp, torch.zeros(4, 3, dtype=F64), 1 / L, 300)
    assert out["theta"].shape == (301, 4, 3) and out["objective"].shape == (301,)
    for t in (0, 150, 299):
        g = pg_theorem_gradient(mdp, out["theta"][t])
        assert torch.allclose(out["theta"][t + 1], out["theta"][t] + g / L, atol=1e-13)
        exact = float(objective(mdp, softmax_policy(out["theta"][t])))
        assert float(out["objective"][t]) == pytest.approx(exact, abs=1e-13)
    # ascent lemma with eta = 1/L: J_{t+1} - J_t >= ||grad_t||^2 / (2L)
    gain = out["objective"][1:] - out["objective"][:-1]
    assert bool((gain >= out["grad_norm"][:-1] ** 2 / (2 * L) - 1e-14).all())


def test_bandit_rate_and_monotone_optimal_probability():
    r = torch.tensor([0.1, 0.8, 0.35, 0.79, 0.0], dtype=F64)
    K, eta = 5, 1 / bandit_smoothness(r)
    out = softmax_pg(bandit(r), torch.zeros(1, K, dtype=F64), eta, 3000)
    p_star = torch.softmax(out["theta"][:, 0], -1)[:, 1]
    assert bool((p_star[1:] >= p_star[:-1] - 1e-15).all())
    t = torch.arange(1, 3001, dtype=F64)
    gap = 0.8 - out["objective"][1:]
    assert bool((gap <= 2 / (eta * (1 / K) ** 2 * t)).all())
    assert float(gap[-1]) < 0.01


def test_lojasiewicz_inequality_on_a_run(mdp):
    pi_star, V_star = optimal_policy(mdp)
    out = softmax_pg(mdp, _theta(8), 1 / mdp_smoothness(mdp.gamma), 500)
    kappa = lojasiewicz_constant(mdp, out["theta"], pi_star)
    gap = float(mdp.initial @ V_star) - out["objective"]
    assert bool((gap > 0).all())
    assert bool((out["grad_norm"] >= kappa * gap - 1e-14).all())
    assert float(lojasiewicz_constant(mdp, out["theta"][7], pi_star)) == pytest.approx(float(kappa[7]))


def test_optimal_policy_satisfies_bellman_optimality(mdp):
    pi_star, V_star = optimal_policy(mdp)
    _, Q = evaluate(mdp, pi_star)
    assert torch.allclose(Q.max(-1).values, V_star, atol=1e-12)
    for seed in range(5):
        assert bool((evaluate(mdp, softmax_policy(_theta(seed, 3.0)))[0] <= V_star + 1e-12).all())


def test_expected_group_gradient_matches_the_baseline_algebra():
    pol = TabularSequencePolicy(3, 3)
    theta = pol.init_theta(0.7, torch.Generator().manual_seed(1))
    rewards = ((pol.sequences == 0).sum(-1) >= 2).double()
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    grad = pol.exact_gradient(theta, rewards)

    def slope(G, norm, loo):
        e = expected_group_gradient(probs, scores, rewards, G, norm, loo)
        return float(e @ grad / grad.square().sum())

    for G in (2, 3, 4):
        assert slope(G, False, True) == pytest.approx(1.0, abs=1e-12)  # leave-one-out is unbiased
        assert slope(G, False, False) == pytest.approx((G - 1) / G, abs=1e-12)  # the mean shrinks it
    # normalised, G = 2: leave-one-out pairs are never normalised; the mean gives +-1/sqrt(2)
    assert slope(2, True, True) == pytest.approx(1.0, abs=1e-12)
    assert slope(2, True, False) == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6), abs=1e-12)


def test_expected_group_gradient_against_monte_carlo():
    pol = TabularSequencePolicy(2, 3)
    theta = pol.init_theta(0.5, torch.Generator().manual_seed(2))
    rewards = pol.sequences.sum(-1).double() / 3  # four reward values
    probs, scores = pol.sequence_probs(theta), pol.scores(theta)
    exact = expected_group_gradient(probs, scores, rewards, 3, True, False)
    gen = torch.Generator().manual_seed(3)
    n = 40000
    idx = torch.multinomial(probs, 3 * n, replacement=True, generator=gen).reshape(n, 3)
    chunk = 500  # groups per call: grpo_advantages builds a [rows, rows] matrix
    ids = torch.arange(chunk).repeat_interleave(3)[:, None]
    ones = torch.ones(3 * chunk, 1, dtype=F64)
    r_all = rewards[idx].reshape(-1, 3 * chunk)
    adv = torch.cat([grpo_advantages(ids, r, ones, True, False)[:, 0] for r in r_all])
    per_group = (adv[:, None] * scores[idx.reshape(-1)]).reshape(n, 3, -1).mean(1)
    mc, se = per_group.mean(0), per_group.std(0) / n**0.5
    assert bool(((mc - exact).abs() < 5 * se + 1e-9).all())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: TabularMDP(torch.ones(2, 2, 2), torch.zeros(2, 2), 0.9, HALF), "transitions"),
        (lambda: TabularMDP(UNIFORM, torch.zeros(2, 3), 0.9, HALF), "rewards"),
        (lambda: TabularMDP(UNIFORM, torch.zeros(2, 2), 1.0, HALF), "gamma"),
        (lambda: TabularMDP(UNIFORM, torch.zeros(2, 2), 0.5, torch.tensor([0.7, 0.5])), "initial"),
        (lambda: random_mdp(0, 2, 0.5, torch.Generator()), "num_states"),
        (lambda: random_mdp(2, 2, 0.5, 7), "generator"),
        (lambda: softmax_policy(torch.zeros(3)), "theta"),
        (lambda: softmax_policy(torch.zeros(2, 2, dtype=torch.long)), "theta"),
        (lambda: bandit(torch.tensor([[1.0]])), "rewards"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_bad_policies_and_run_arguments(mdp):
    with pytest.raises(ValueError, match="pi"):
        evaluate(mdp, torch.full((4, 2), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="pi_new"):
        performance_difference(mdp, torch.full((4, 3), 0.5, dtype=F64), torch.full((4, 3), 1 / 3, dtype=F64))
    with pytest.raises(TypeError, match="mdp"):
        surrogate("mdp", torch.full((4, 3), 1 / 3), torch.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match="step_size"):
        softmax_pg(mdp, torch.zeros(4, 3, dtype=F64), 0.0, 10)
    with pytest.raises(ValueError, match="num_steps"):
        softmax_pg(mdp, torch.zeros(4, 3, dtype=F64), 0.1, 0)
    with pytest.raises(ValueError, match="theta0"):
        softmax_pg(mdp, torch.zeros(3, 3, dtype=F64), 0.1, 5)
    with pytest.raises(ValueError, match="pi_star"):
        lojasiewicz_constant(mdp, torch.zeros(4, 3, dtype=F64), torch.full((4, 3), 1 / 3, dtype=F64))
    with pytest.raises(ValueError, match="gamma"):
        mdp_smoothness(1.0)
    with pytest.raises(ValueError, match="group_size"):
        expected_group_gradient(torch.ones(2) / 2, torch.zeros(2, 1), torch.zeros(2), 1, True, True)
    with pytest.raises(ValueError, match="probs"):
        expected_group_gradient(torch.ones(2), torch.zeros(2, 1), torch.zeros(2), 2, True, True)
    with pytest.raises(ValueError, match="same shape"):
        max_tv(torch.ones(2, 2) / 2, torch.ones(2, 3) / 3)
