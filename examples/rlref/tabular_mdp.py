"""Exact tabular MDPs: the identities and bounds proved on the Mathematical Foundations page.

A finite discounted MDP ``(P, r, gamma, mu)`` with ``S`` states and ``A`` actions, solved exactly with
linear algebra in float64, so every identity can be checked to float precision:

* policy evaluation ``V = (I - gamma P_pi)^{-1} r_pi``, ``Q = r + gamma P V``, advantage ``A = Q - V``;
* the normalised discounted occupancy ``d_mu^pi = (1 - gamma) mu^T (I - gamma P_pi)^{-1}``;
* the objective ``J(pi) = mu^T V^pi`` and, for the tabular softmax policy ``pi = softmax(theta)``, the
  policy-gradient theorem ``dJ/dtheta[s, a] = d(s) pi(a|s) A(s, a) / (1 - gamma)``;
* the performance-difference lemma, the Kakade-Langford surrogate ``L_pi(pi')`` and the TRPO bound
  ``|J(pi') - J(pi) - L_pi(pi')| <= 4 gamma eps alpha^2 / (1 - gamma)^2``;
* exact softmax policy gradient ascent, optimal policies by policy iteration, and the quantities of the
  convergence proof (Lojasiewicz constant, smoothness constants);
* the exact expected GRPO gradient of a one-step problem for each advantage setting.

A bandit is the special case ``S = 1``, ``gamma = 0`` (:func:`bandit`). None of this is NeMo RL code:
NeMo RL's policies share parameters across states and it estimates gradients from samples; the
docstrings name the NeMo RL counterpart where there is one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from rlref.advantages import grpo_advantages

__all__ = [
    "TabularMDP",
    "advantage",
    "autograd_gradient",
    "bandit",
    "bandit_smoothness",
    "evaluate",
    "expected_group_gradient",
    "lojasiewicz_constant",
    "max_kl",
    "max_tv",
    "mdp_smoothness",
    "objective",
    "occupancy",
    "optimal_policy",
    "performance_difference",
    "pg_theorem_gradient",
    "random_mdp",
    "softmax_pg",
    "softmax_policy",
    "state_transition",
    "surrogate",
    "surrogate_bound",
]

_F64 = torch.float64


def _check_tensor(name: str, value, dim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite")
    return value


def _check_simplex(name: str, value: torch.Tensor) -> None:
    """Rows of ``value`` (last dimension) must be probability vectors."""
    if bool((value < 0).any()) or not torch.allclose(value.sum(-1), torch.ones((), dtype=value.dtype),
                                                       atol=1e-9):
        raise ValueError(f"{name} must be non-negative and sum to 1 over its last dimension")


@dataclass(frozen=True)
class TabularMDP:
    """``transitions[s, a, s'] = P(s'|s, a)``, ``rewards[s, a]``, discount ``gamma`` in [0, 1) and the
    initial-state distribution ``initial`` (``mu``); all float64."""

    transitions: torch.Tensor
    rewards: torch.Tensor
    gamma: float
    initial: torch.Tensor

    def __post_init__(self) -> None:
        p = _check_tensor("transitions", self.transitions, 3)
        r = _check_tensor("rewards", self.rewards, 2)
        mu = _check_tensor("initial", self.initial, 1)
        S, A, S2 = p.shape
        if S2 != S or r.shape != (S, A) or mu.shape != (S,):
            raise ValueError(
                f"transitions must be [S, A, S], rewards [S, A] and initial [S]; got {tuple(p.shape)}, "
                f"{tuple(r.shape)} and {tuple(mu.shape)}"
            )
        _check_simplex("transitions", p)
        _check_simplex("initial", mu)
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)):
            raise TypeError(f"gamma must be a number, got {self.gamma!r}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma!r}")
        for name in ("transitions", "rewards", "initial"):
            object.__setattr__(self, name, getattr(self, name).to(_F64))

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[1]


def random_mdp(num_states: int, num_actions: int, gamma: float, generator: torch.Generator) -> TabularMDP:
    """A random MDP: Dirichlet(1) transitions, rewards uniform in [0, 1], ``mu`` Dirichlet(1) (all > 0)."""
    for name, value in (("num_states", num_states), ("num_actions", num_actions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    expo = -torch.rand(num_states, num_actions, num_states, generator=generator, dtype=_F64).log()
    rewards = torch.rand(num_states, num_actions, generator=generator, dtype=_F64)
    mu = -torch.rand(num_states, generator=generator, dtype=_F64).log()
    return TabularMDP(expo / expo.sum(-1, keepdim=True), rewards, gamma, mu / mu.sum())


def bandit(rewards: torch.Tensor) -> TabularMDP:
    """A ``K``-armed bandit as a one-state MDP with ``gamma = 0``: ``J(pi) = pi^T r``."""
    r = _check_tensor("rewards", rewards, 1).to(_F64)
    K = r.shape[0]
    return TabularMDP(torch.ones(1, K, 1, dtype=_F64), r[None, :], 0.0, torch.ones(1, dtype=_F64))


def softmax_policy(theta: torch.Tensor) -> torch.Tensor:
    """Tabular softmax ``pi(a|s) = exp(theta[s, a]) / sum_b exp(theta[s, b])``, ``[S, A]``."""
    return torch.softmax(_check_tensor("theta", theta, 2), dim=-1)


def _sa(mdp: TabularMDP) -> tuple[int, int]:
    return (mdp.num_states, mdp.num_actions)


def _check_policy(mdp: TabularMDP, pi, name: str = "pi") -> torch.Tensor:
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    pi = _check_tensor(name, pi, 2)
    if pi.shape != (mdp.num_states, mdp.num_actions):
        raise ValueError(f"{name} must be [S, A] = {_sa(mdp)}, got {tuple(pi.shape)}")
    _check_simplex(name, pi.detach())
    return pi


def state_transition(mdp: TabularMDP, pi: torch.Tensor) -> torch.Tensor:
    """``P_pi[s, s'] = sum_a pi(a|s) P(s'|s, a)``."""
    pi = _check_policy(mdp, pi)
    return torch.einsum("sa,sat->st", pi, mdp.transitions)


def evaluate(mdp: TabularMDP, pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(V [S], Q [S, A])``: ``(I - gamma P_pi) V = r_pi`` and ``Q = r + gamma P V``."""
    pi = _check_policy(mdp, pi)
    S = mdp.num_states
    r_pi = (pi * mdp.rewards).sum(-1)
    V = torch.linalg.solve(torch.eye(S, dtype=_F64) - mdp.gamma * state_transition(mdp, pi), r_pi)
    Q = mdp.rewards + mdp.gamma * mdp.transitions @ V
    return V, Q


def advantage(mdp: TabularMDP, pi: torch.Tensor) -> torch.Tensor:
    """``A(s, a) = Q(s, a) - V(s)``; ``sum_a pi(a|s) A(s, a) = 0``."""
    V, Q = evaluate(mdp, pi)
    return Q - V[:, None]


def occupancy(mdp: TabularMDP, pi: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised discounted occupancy ``d(s) = (1 - gamma) sum_t gamma^t Pr(s_t = s)``, ``s_0 ~ initial``
    (default ``mdp.initial``): the solution of ``d^T (I - gamma P_pi) = (1 - gamma) mu^T``."""
    pi = _check_policy(mdp, pi)
    mu = mdp.initial if initial is None else _check_tensor("initial", initial, 1).to(_F64)
    if mu.shape != (mdp.num_states,):
        raise ValueError(f"initial must be [S] = ({mdp.num_states},), got {tuple(mu.shape)}")
    M = torch.eye(mdp.num_states, dtype=_F64) - mdp.gamma * state_transition(mdp, pi)
    return torch.linalg.solve(M.T, (1 - mdp.gamma) * mu)


def objective(mdp: TabularMDP, pi: torch.Tensor) -> torch.Tensor:
    """``J(pi) = sum_s mu(s) V^pi(s)`` (differentiable in ``pi``)."""
    return mdp.initial @ evaluate(mdp, pi)[0]


def pg_theorem_gradient(mdp: TabularMDP, theta: torch.Tensor) -> torch.Tensor:
    """The policy-gradient theorem for the tabular softmax: ``d(s) pi(a|s) A(s, a) / (1 - gamma)``.

    NeMo RL estimates ``E[A * grad log pi]`` from samples (``ClippedPGLossFn``, at ratio 1).
    """
    pi = softmax_policy(theta).detach()
    return occupancy(mdp, pi)[:, None] * pi * advantage(mdp, pi) / (1 - mdp.gamma)


def autograd_gradient(mdp: TabularMDP, theta: torch.Tensor) -> torch.Tensor:
    """``dJ(softmax(theta))/dtheta`` by automatic differentiation through the linear solve."""
    th = _check_tensor("theta", theta, 2).detach().to(_F64).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(mdp, softmax_policy(th)), th)
    return grad


def performance_difference(mdp: TabularMDP, pi_new: torch.Tensor, pi_old: torch.Tensor) -> dict[str, float]:
    """Both sides of the performance-difference lemma (Kakade & Langford 2002):

    ``J(pi') - J(pi) = 1/(1 - gamma) * sum_s d^{pi'}(s) sum_a pi'(a|s) A^pi(s, a)``.
    Returns ``{"gain": lhs, "pdl": rhs}``.
    """
    pi_new = _check_policy(mdp, pi_new, "pi_new")
    pi_old = _check_policy(mdp, pi_old, "pi_old")
    adv = advantage(mdp, pi_old)
    rhs = occupancy(mdp, pi_new) @ (pi_new * adv).sum(-1) / (1 - mdp.gamma)
    return {"gain": float(objective(mdp, pi_new) - objective(mdp, pi_old)), "pdl": float(rhs)}


def surrogate(mdp: TabularMDP, pi_new: torch.Tensor, pi_old: torch.Tensor) -> torch.Tensor:
    """``L_pi(pi') = 1/(1 - gamma) * sum_s d^pi(s) sum_a pi'(a|s) A^pi(s, a)``: the lemma with the old
    policy's occupancy; ``L_pi(pi) = 0`` and its gradient at ``pi`` is ``grad J``.

    NeMo RL: the unclipped part of ``ClippedPGLossFn`` (ratio times advantage on old-policy samples).
    """
    pi_new = _check_policy(mdp, pi_new, "pi_new")
    pi_old = _check_policy(mdp, pi_old, "pi_old")
    return occupancy(mdp, pi_old) @ (pi_new * advantage(mdp, pi_old)).sum(-1) / (1 - mdp.gamma)


def max_tv(pi_new: torch.Tensor, pi_old: torch.Tensor) -> float:
    """``alpha = max_s TV(pi'(.|s), pi(.|s)) = max_s 1/2 sum_a |pi'(a|s) - pi(a|s)|``."""
    a = _check_tensor("pi_new", pi_new, 2)
    b = _check_tensor("pi_old", pi_old, 2)
    if a.shape != b.shape:
        raise ValueError(f"pi_new {tuple(a.shape)} and pi_old {tuple(b.shape)} must have the same shape")
    return float(0.5 * (a - b).abs().sum(-1).max())


def max_kl(pi_old: torch.Tensor, pi_new: torch.Tensor) -> float:
    """``max_s KL(pi(.|s) || pi'(.|s))`` (TRPO's ``D_KL^max``); ``inf`` where ``pi'`` misses ``pi``'s
    support."""
    a = _check_tensor("pi_old", pi_old, 2)
    b = _check_tensor("pi_new", pi_new, 2)
    if a.shape != b.shape:
        raise ValueError(f"pi_old {tuple(a.shape)} and pi_new {tuple(b.shape)} must have the same shape")
    terms = torch.where(a > 0, a * (a.log() - b.log()), torch.zeros_like(a))
    return float(terms.sum(-1).max())


def surrogate_bound(mdp: TabularMDP, pi_new: torch.Tensor, pi_old: torch.Tensor) -> dict[str, float]:
    """The TRPO bound (Schulman et al. 2015, Theorem 1, after Kakade & Langford 2002):

    ``|J(pi') - J(pi) - L_pi(pi')| <= 4 gamma eps alpha^2 / (1 - gamma)^2``
    ``<= 2 gamma eps KL_max / (1 - gamma)^2``
    with ``eps = max_{s,a} |A^pi(s, a)|``, ``alpha = max_s TV`` and ``KL_max = max_s KL(pi || pi')``
    (Pinsker: ``alpha^2 <= KL_max / 2``). Returns ``gain``, ``surrogate``, ``penalty`` (the TV form),
    ``penalty_kl``, ``lower`` (= ``surrogate - penalty``), ``alpha``, ``eps``, ``kl_max``.
    """
    pi_new = _check_policy(mdp, pi_new, "pi_new")
    pi_old = _check_policy(mdp, pi_old, "pi_old")
    eps = float(advantage(mdp, pi_old).abs().max())
    alpha = max_tv(pi_new, pi_old)
    kl = max_kl(pi_old, pi_new)
    scale = mdp.gamma * eps / (1 - mdp.gamma) ** 2
    sur = float(surrogate(mdp, pi_new, pi_old))
    penalty = 4 * scale * alpha**2
    return {
        "gain": float(objective(mdp, pi_new) - objective(mdp, pi_old)),
        "surrogate": sur,
        "penalty": penalty,
        "penalty_kl": 2 * scale * kl,
        "lower": sur - penalty,
        "alpha": alpha,
        "eps": eps,
        "kl_max": kl,
    }


def optimal_policy(mdp: TabularMDP, max_iterations: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic optimal policy ``[S, A]`` (one-hot) and ``V* [S]`` by exact policy iteration."""
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    greedy = torch.zeros(mdp.num_states, dtype=torch.long)
    for _ in range(max_iterations):
        pi = torch.nn.functional.one_hot(greedy, mdp.num_actions).to(_F64)
        V, Q = evaluate(mdp, pi)
        improved = Q.argmax(-1)
        # switch only on a strict improvement, so ties cannot make the iteration cycle
        keep = Q.gather(1, improved[:, None])[:, 0] <= Q.gather(1, greedy[:, None])[:, 0] + 1e-12
        new = torch.where(keep, greedy, improved)
        if torch.equal(new, greedy):
            return pi, V
        greedy = new
    raise RuntimeError(f"policy iteration did not converge in {max_iterations} iterations")


def softmax_pg(mdp: TabularMDP, theta0: torch.Tensor, step_size: float, num_steps: int) -> dict:
    """Exact softmax policy gradient ascent ``theta_{t+1} = theta_t + eta * dJ/dtheta(theta_t)``.

    Returns ``theta [T+1, S, A]``, ``objective [T+1]`` and ``grad_norm [T+1]`` (float64).
    """
    theta = _check_tensor("theta0", theta0, 2).detach().to(_F64)
    if theta.shape != (mdp.num_states, mdp.num_actions):
        raise ValueError(f"theta0 must be [S, A] = {_sa(mdp)}, got {tuple(theta.shape)}")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    # The loop runs in NumPy float64 (tiny matrices: per-call overhead dominates); the same formulas as
    # evaluate/occupancy/pg_theorem_gradient, which the tests compare it with.
    P, r, mu = (x.numpy() for x in (mdp.transitions, mdp.rewards, mdp.initial))
    gamma = mdp.gamma
    eye = np.eye(mdp.num_states)
    th = theta.numpy().copy()
    thetas = np.empty((num_steps + 1, *th.shape))
    values = np.empty(num_steps + 1)
    norms = np.empty(num_steps + 1)
    for t in range(num_steps + 1):
        z = np.exp(th - th.max(-1, keepdims=True))
        pi = z / z.sum(-1, keepdims=True)
        M = eye - gamma * np.einsum("sa,sat->st", pi, P)
        V = np.linalg.solve(M, (pi * r).sum(-1))
        d = np.linalg.solve(M.T, (1 - gamma) * mu)
        grad = d[:, None] * pi * (r + gamma * P @ V - V[:, None]) / (1 - gamma)
        thetas[t], values[t], norms[t] = th, mu @ V, np.sqrt((grad**2).sum())
        th = th + step_size * grad
    return {"theta": torch.from_numpy(thetas), "objective": torch.from_numpy(values),
            "grad_norm": torch.from_numpy(norms)}


def mdp_smoothness(gamma: float) -> float:
    """``8 / (1 - gamma)^3``: the smoothness constant of ``theta -> J(softmax(theta))`` for rewards in
    [0, 1] (cited: Mei et al. 2020; Agarwal et al. 2021), so ``eta = (1 - gamma)^3 / 8`` is safe."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1:
        raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")
    return 8 / (1 - gamma) ** 3


def bandit_smoothness(rewards: torch.Tensor) -> float:
    """``3 * (max r - min r)``: a smoothness constant of ``theta -> softmax(theta)^T r`` (proved on the
    page)."""
    r = _check_tensor("rewards", rewards, 1)
    return 3 * float(r.max() - r.min())


def lojasiewicz_constant(mdp: TabularMDP, theta: torch.Tensor, pi_star: torch.Tensor) -> torch.Tensor:
    """``kappa = min_s pi(a*(s)|s) / (sqrt(S) * max_s d^{pi*}(s) / d^pi(s))`` for ``pi = softmax(theta)``,
    ``a*(s)`` the action of the deterministic optimal ``pi_star``: ``||grad J|| >= kappa (J* - J)``
    (proved on the page, after Mei et al. 2020). ``theta`` is ``[S, A]`` or a batch ``[T, S, A]``;
    returns a scalar or ``[T]`` tensor.
    """
    pi_star = _check_policy(mdp, pi_star, "pi_star")
    if not torch.equal(pi_star, (pi_star == 1).to(pi_star.dtype)):
        raise ValueError("pi_star must be deterministic (one-hot rows)")
    if not isinstance(theta, torch.Tensor) or theta.dim() not in (2, 3):
        raise ValueError("theta must be a [S, A] or [T, S, A] tensor")
    th = _check_tensor("theta", theta, theta.dim()).to(_F64)
    batch = th if th.dim() == 3 else th[None]
    if batch.shape[1:] != (mdp.num_states, mdp.num_actions):
        raise ValueError(f"theta must end in [S, A] = {_sa(mdp)}, got {tuple(th.shape)}")
    pi = torch.softmax(batch, -1)
    M = torch.eye(mdp.num_states, dtype=_F64) - mdp.gamma * torch.einsum("tsa,sau->tsu", pi, mdp.transitions)
    rhs = ((1 - mdp.gamma) * mdp.initial).expand(len(batch), -1)
    d = torch.linalg.solve(M.transpose(1, 2), rhs)
    c = (pi * pi_star).sum(-1).min(-1).values
    mismatch = (occupancy(mdp, pi_star)[None] / d).max(-1).values
    kappa = c / (math.sqrt(mdp.num_states) * mismatch)
    return kappa if th.dim() == 3 else kappa[0]


def expected_group_gradient(
    probs: torch.Tensor,
    scores: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    normalize_rewards: bool,
    use_leave_one_out_baseline: bool,
) -> torch.Tensor:
    """Exact ``E[1/G sum_i A_i grad log pi(y_i)]`` on a one-step problem, with GRPO advantages.

    ``probs [N]``, ``scores [N, P]`` (``grad log pi(y)``) and ``rewards [N]`` describe every outcome. By
    exchangeability the expectation is ``sum_y pi(y) score(y) E[A_1 | R_1 = R(y)]``; the conditional
    mean enumerates the rewards of the other ``G - 1`` samples over the distinct reward values.
    NeMo RL: ``GRPOAdvantageEstimator`` (nemo_rl/algorithms/advantage_estimator.py:57-98), config
    ``grpo.normalize_rewards`` and ``grpo.use_leave_one_out_baseline``.
    """
    probs = _check_tensor("probs", probs, 1).to(_F64)
    scores = _check_tensor("scores", scores, 2).to(_F64)
    rewards = _check_tensor("rewards", rewards, 1).to(_F64)
    if not probs.shape[0] == scores.shape[0] == rewards.shape[0]:
        raise ValueError(
            f"probs {tuple(probs.shape)}, scores {tuple(scores.shape)} and rewards {tuple(rewards.shape)} "
            "must describe the same outcomes"
        )
    _check_simplex("probs", probs)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}")
    values = torch.unique(rewards)
    if len(values) ** (group_size - 1) > 100_000:
        raise ValueError(f"too many reward combinations to enumerate: {len(values)} values, G = {group_size}")
    p_value = torch.stack([probs[rewards == v].sum() for v in values])
    ids = torch.zeros(group_size, 1, dtype=torch.long)
    mask = torch.ones(group_size, 1, dtype=_F64)
    cond = torch.zeros(len(values), dtype=_F64)  # E[A_1 | R_1 = values[k]]
    for others in itertools.product(range(len(values)), repeat=group_size - 1):
        weight = torch.prod(p_value[list(others)])
        for k in range(len(values)):
            group = values[[k, *others]]
            adv = grpo_advantages(ids, group, mask, normalize_rewards, use_leave_one_out_baseline)
            cond[k] += weight * adv[0, 0]
    per_outcome = cond[torch.searchsorted(values, rewards)]
    return (probs * per_outcome) @ scores
