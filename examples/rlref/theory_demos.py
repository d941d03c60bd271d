"""Small exact-and-Monte-Carlo models behind the theory pages (Mathematical Foundations, SFT Theory).

Everything here is tiny enough to enumerate, so each Monte Carlo estimate can be set beside its exact
value:

* a **token-level MDP** with a tabular softmax policy over *full prefixes* (state = prefix, action =
  next token, reward only at the end): exact objective, exact policy gradient, the score function of
  every sequence, and Monte Carlo policy-gradient estimators with four baselines;
* **importance weights** of categorical token distributions and of sequences of i.i.d. tokens;
* the **KL estimators** k1/k2/k3 of :func:`rlref.kl.calculate_kl`, their mean, bias and spread;
* **micro-batch reductions** of any loss that follows NeMo RL's ``LossFunction`` protocol (global
  counts vs. per-micro-batch means);
* for SFT: the cross-entropy decomposition ``CE = H + KL``, forward- vs reverse-KL fits of a
  discretised Gaussian, and a token mask built from chat roles.

None of this is NeMo RL code; docstrings name the NeMo RL behaviour each model illustrates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from rlref.kl import KL_TYPES, calculate_kl

__all__ = [
    "BASELINES",
    "TabularSequencePolicy",
    "cross_entropy_decomposition",
    "discretised_gaussian",
    "fit_discretised_gaussian",
    "importance_weight_stats",
    "kl_estimator_stats",
    "microbatch_reductions",
    "pg_estimates",
    "pg_variance_exact",
    "sft_token_mask",
]

#: Baselines of :func:`pg_estimates`: none, the exact expected reward (an oracle constant), the group
#: mean including the sample itself, and the leave-one-out mean of the other samples of the group.
BASELINES = ("none", "oracle", "group_mean", "leave_one_out")


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _log_softmax_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor):
    """float64 log-softmax of two 1-D logit vectors of equal size; the error names both arguments."""
    if a.dim() != 1 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must be 1-D of equal size, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


# --------------------------------------------------------------------------------------------------
# Token-level MDP with a tabular softmax policy
# --------------------------------------------------------------------------------------------------


class TabularSequencePolicy:
    """A softmax policy with one logit vector per prefix, over responses of ``length`` tokens.

    The MDP: state ``s_t`` = the prefix ``y_<t`` (the prompt is fixed and left implicit), action
    ``a_t = y_t`` from ``vocab_size`` tokens, deterministic transition ``s_{t+1} = s_t + [a_t]``,
    reward ``R(y)`` only after the last token. ``theta`` has one row per prefix (``sum_t V^t`` rows),
    so this is the most general policy over the MDP, with ``log pi(y) = sum_t log pi(y_t | y_<t)``.
    All ``V^T`` responses are enumerated, which makes every expectation exact.
    """

    def __init__(self, vocab_size: int, length: int, dtype: torch.dtype = torch.float64) -> None:
        self.vocab_size = _check_positive_int("vocab_size", vocab_size, 2)
        self.length = _check_positive_int("length", length)
        if vocab_size**length > 100_000:
            raise ValueError(f"vocab_size**length = {vocab_size**length} responses is too many to enumerate")
        self.dtype = dtype
        V, T = vocab_size, length
        self.offsets = [sum(V**k for k in range(t)) for t in range(T)]
        self.num_states = sum(V**t for t in range(T))
        grids = torch.meshgrid(*[torch.arange(V)] * T, indexing="ij")
        self.sequences = torch.stack([g.reshape(-1) for g in grids], dim=-1)  # [V^T, T], row-major
        # state index of every (sequence, position): offset_t + base-V code of the prefix
        states = torch.zeros_like(self.sequences)
        code = torch.zeros(self.sequences.shape[0], dtype=torch.long)
        for t in range(T):
            states[:, t] = self.offsets[t] + code
            code = code * V + self.sequences[:, t]
        self.states = states

    @property
    def num_params(self) -> int:
        return self.num_states * self.vocab_size

    def init_theta(self, scale: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits ``[num_states, V]``: zeros (uniform policy) plus ``scale`` times standard normal noise."""
        _check_generator(generator)
        noise = torch.randn(self.num_states, self.vocab_size, generator=generator, dtype=self.dtype)
        return scale * noise

    def _check_theta(self, theta: torch.Tensor) -> None:
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
        if theta.shape != (self.num_states, self.vocab_size):
            raise ValueError(
                f"theta must have shape {(self.num_states, self.vocab_size)}, got {tuple(theta.shape)}"
            )

    def token_logprobs(self, theta: torch.Tensor, sequences: torch.Tensor | None = None) -> torch.Tensor:
        """``log pi(y_t | y_<t)`` for every row of ``sequences`` (default: all ``V^T``), ``[N, T]``."""
        self._check_theta(theta)
        if sequences is None:
            seqs, states = self.sequences, self.states
        else:
            seqs = sequences
            if seqs.dim() != 2 or seqs.shape[1] != self.length:
                raise ValueError(f"sequences must be [N, {self.length}], got {tuple(seqs.shape)}")
            states = self.states[self.index_of(seqs)]
        logp = torch.log_softmax(theta, dim=-1)
        return logp[states, seqs]

    def index_of(self, sequences: torch.Tensor) -> torch.Tensor:
        """Row index of each sequence in :attr:`sequences` (base-V code)."""
        code = torch.zeros(sequences.shape[0], dtype=torch.long)
        for t in range(self.length):
            code = code * self.vocab_size + sequences[:, t]
        return code

    def sequence_probs(self, theta: torch.Tensor) -> torch.Tensor:
        """``pi(y) = prod_t pi(y_t | y_<t)`` for all ``V^T`` responses (sums to 1)."""
        return self.token_logprobs(theta).sum(-1).exp()

    def objective(self, theta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Exact ``J(theta) = sum_y pi(y) R(y)``."""
        return (self.sequence_probs(theta) * rewards).sum()

    def exact_gradient(self, theta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """``grad J`` by automatic differentiation of the exact objective, flattened to ``[P]``."""
        th = theta.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.objective(th, rewards), th)
        return grad.reshape(-1)

    def surrogate(self, theta_old: torch.Tensor, theta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Exact token-level surrogate ``L(theta) = E_{y ~ pi_old}[sum_t (rho_t - 1) A(y)]``.

        ``rho_t = pi_theta(y_t|y_<t) / pi_old(y_t|y_<t)`` and ``A(y) = R(y) - J(theta_old)`` is the
        sequence advantage broadcast to every token (as GRPO does). ``L(theta_old) = 0`` and
        ``grad L(theta_old) = grad J(theta_old)``, so ``L`` tracks ``J(theta) - J(theta_old)`` to first
        order; the two drift apart as ``pi_theta`` moves away from ``pi_old`` (the trust-region argument).
        """
        self._check_theta(theta_old)
        p_old = self.sequence_probs(theta_old).detach()
        adv = rewards - (p_old * rewards).sum()
        rho = (self.token_logprobs(theta) - self.token_logprobs(theta_old).detach()).exp()
        return (p_old * (rho - 1.0).sum(-1) * adv).sum()

    def scores(self, theta: torch.Tensor) -> torch.Tensor:
        """Score functions ``grad_theta log pi(y)`` of all responses, ``[V^T, P]`` (closed form).

        For a tabular softmax, ``d log pi(a|s) / d theta[s', :] = 1[s = s'] (onehot(a) - pi(.|s))``,
        and the sequence score is the sum over positions (the log-derivative trick on the product).
        """
        self._check_theta(theta)
        probs = torch.softmax(theta, dim=-1)
        N, T, V = self.sequences.shape[0], self.length, self.vocab_size
        out = torch.zeros(N, self.num_states, V, dtype=theta.dtype)
        rows = torch.arange(N)
        for t in range(T):
            s = self.states[:, t]
            out[rows, s] -= probs[s]
            out[rows, s, self.sequences[:, t]] += 1.0
        return out.reshape(N, -1)


def pg_estimates(
    probs: torch.Tensor,
    scores: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    num_batches: int,
    baseline: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``num_batches`` independent REINFORCE estimates of ``grad J``, each from one group of responses.

    Each estimate draws ``group_size`` responses ``y_i ~ pi`` (with replacement) and returns
    ``g_hat = (1/G) sum_i (R(y_i) - b_i) grad log pi(y_i)`` with ``b_i`` set by ``baseline``:

    * ``"none"``: ``b_i = 0``;
    * ``"oracle"``: ``b_i = J`` (the exact expected reward, a constant);
    * ``"group_mean"``: ``b_i = mean_j R(y_j)`` (includes ``y_i``: biased by the factor ``(G-1)/G``);
    * ``"leave_one_out"``: ``b_i = mean_{j != i} R(y_j)`` (unbiased; NeMo RL's
      ``use_leave_one_out_baseline``, nemo_rl/algorithms/utils.py:104-198).

    ``probs`` ``[N]``, ``scores`` ``[N, P]``, ``rewards`` ``[N]`` describe all ``N`` responses.
    Returns ``[num_batches, P]``.
    """
    _check_generator(generator)
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    G = _check_positive_int("group_size", group_size)
    nb = _check_positive_int("num_batches", num_batches)
    if baseline == "leave_one_out" and G < 2:
        raise ValueError("baseline='leave_one_out' needs group_size >= 2")
    shapes_ok = probs.dim() == 1 and rewards.shape == probs.shape and scores.dim() == 2
    if not shapes_ok or scores.shape[0] != probs.numel():
        raise ValueError(
            f"need probs [N], rewards [N], scores [N, P]; got {tuple(probs.shape)}, {tuple(rewards.shape)}, "
            f"{tuple(scores.shape)}"
        )
    idx = torch.multinomial(probs.float(), nb * G, replacement=True, generator=generator).reshape(nb, G)
    r = rewards[idx].to(scores.dtype)
    if baseline == "none":
        b = torch.zeros_like(r)
    elif baseline == "oracle":
        b = torch.full_like(r, float((probs * rewards).sum()))
    elif baseline == "group_mean":
        b = r.mean(dim=1, keepdim=True).expand_as(r)
    else:
        b = (r.sum(dim=1, keepdim=True) - r) / (G - 1)
    weights = torch.zeros(nb, probs.numel(), dtype=scores.dtype)
    weights.scatter_add_(1, idx, (r - b) / G)
    return weights @ scores


def pg_variance_exact(
    probs: torch.Tensor,
    scores: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    baseline: float | str = 0.0,
) -> float:
    """Exact total variance ``E||g_hat - E g_hat||^2`` of :func:`pg_estimates`.

    ``baseline`` a number ``b`` (a constant baseline): ``(1/G) (E[(R - b)^2 ||s||^2] - ||g||^2)``
    with ``s = grad log pi(y)`` and ``g = grad J`` (the mean is ``g`` for every ``b``, since
    ``E[s] = 0``).

    ``"leave_one_out"``: the estimate is the U-statistic ``(1/(G(G-1))) sum_{i<j} (R_i - R_j)(s_i - s_j)``,
    so (Hoeffding) its variance is ``((G-2) v + 2 z) / (G(G-1))`` with ``v = E[(R - J)^2 ||s||^2] - ||g||^2``
    (the one-sample variance with the oracle baseline ``J``) and
    ``z = E[(R_1 - R_2)^2 ||s_1 - s_2||^2] / 4 - ||g||^2`` (two independent responses). Since
    ``z >= v / 2`` it is never below the oracle's ``v / G``, and the excess falls like ``1/(G-1)``.

    ``"group_mean"``: that estimate times ``(G-1)/G`` exactly, so ``((G-1)/G)^2`` times the variance.
    """
    G = _check_positive_int("group_size", group_size)
    g = (probs * rewards) @ scores
    g2 = g.square().sum()
    sq_norms = scores.square().sum(-1)
    if not isinstance(baseline, str):
        second = (probs * (rewards - baseline) ** 2 * sq_norms).sum()
        return float((second - g2) / G)
    if baseline not in ("leave_one_out", "group_mean"):
        raise ValueError(f"baseline must be a number, 'leave_one_out' or 'group_mean', got {baseline!r}")
    if G < 2:
        raise ValueError(f"baseline={baseline!r} needs group_size >= 2, got {G}")
    J = (probs * rewards).sum()
    v = (probs * (rewards - J) ** 2 * sq_norms).sum() - g2
    pair_dist = sq_norms[:, None] + sq_norms[None, :] - 2 * scores @ scores.T  # ||s_1 - s_2||^2
    reward_gap = (rewards[:, None] - rewards[None, :]).square()
    z = (probs[:, None] * probs[None, :] * reward_gap * pair_dist).sum() / 4 - g2
    loo = float(((G - 2) * v + 2 * z) / (G * (G - 1)))
    return loo if baseline == "leave_one_out" else ((G - 1) / G) ** 2 * loo


# --------------------------------------------------------------------------------------------------
# Importance sampling
# --------------------------------------------------------------------------------------------------


def importance_weight_stats(
    target_logits: torch.Tensor,
    behaviour_logits: torch.Tensor,
    seq_len: int,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Importance weights ``w = prod_t p(x_t) / q(x_t)`` of ``seq_len`` i.i.d. tokens drawn from ``q``.

    ``p = softmax(target_logits)`` is the target (NeMo RL: the trainer's ``prev_logprobs``) and
    ``q = softmax(behaviour_logits)`` the behaviour policy that sampled the tokens (NeMo RL: the
    inference engine's ``generation_logprobs``). Exact values:

    * ``E_q[w] = 1``; ``Var_q[w] = (sum_x p^2/q)^T - 1 = exp(T * D_2(p||q)) - 1`` (``D_2``: Renyi-2);
    * ``KL(p||q)`` of the sequence ``= T * KL_token``; since ``D_2 >= KL``, ``Var_q[w] >= exp(KL) - 1``.

    Returns the exact KL, the exact variance, the lower bound, and the Monte Carlo mean and variance
    of ``num_samples`` weights, plus the effective sample size fraction ``(sum w)^2 / (n sum w^2)``.
    """
    _check_generator(generator)
    T = _check_positive_int("seq_len", seq_len)
    n = _check_positive_int("num_samples", num_samples, 2)
    logp, logq = _log_softmax_pair("target_logits", target_logits, "behaviour_logits", behaviour_logits)
    p, q = logp.exp(), logq.exp()
    kl_token = float((p * (logp - logq)).sum())
    second_token = float((p.square() / q).sum())
    x = torch.multinomial(q.float(), n * T, replacement=True, generator=generator).reshape(n, T)
    w = (logp[x] - logq[x]).sum(-1).exp()
    return {
        "kl": T * kl_token,
        "var_exact": second_token**T - 1.0,
        "var_lower_bound": math.expm1(T * kl_token),
        "mc_mean": float(w.mean()),
        "mc_var": float(w.var()),
        "ess_fraction": float(w.sum() ** 2 / (n * w.square().sum())),
    }


# --------------------------------------------------------------------------------------------------
# KL estimators k1 / k2 / k3
# --------------------------------------------------------------------------------------------------


def kl_estimator_stats(
    logits: torch.Tensor,
    reference_logits: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    input_clamp_value: float | None = None,
    output_clamp_value: float | None = None,
) -> dict[str, dict[str, float] | float]:
    """Mean, bias, standard deviation and share of negative values of k1, k2, k3.

    Tokens ``x ~ pi = softmax(logits)``; per token, :func:`rlref.kl.calculate_kl` is given
    ``logprobs = log pi(x)`` and ``logprobs_reference = log pi_ref(x)``, as NeMo RL's loss does with
    ``curr_logprobs`` and ``reference_policy_logprobs``. The target is the exact
    ``KL(pi || pi_ref) = sum_x pi (log pi - log pi_ref)``; clamps are off by default so the estimators
    themselves are measured. Per estimator: the Monte Carlo ``mean``, ``bias``, ``std`` and
    ``frac_negative`` of ``num_samples`` tokens, and the exact ``exact_bias``, ``exact_std`` and
    ``exact_frac_negative`` (a sum over the vocabulary).
    """
    _check_generator(generator)
    n = _check_positive_int("num_samples", num_samples, 2)
    logp, logref = _log_softmax_pair("logits", logits, "reference_logits", reference_logits)
    true_kl = float((logp.exp() * (logp - logref)).sum())
    p = logp.exp()
    x = torch.multinomial(p.float(), n, replacement=True, generator=generator)
    out: dict[str, dict[str, float] | float] = {"true_kl": true_kl}
    for kl_type in KL_TYPES:
        every = calculate_kl(logp, logref, kl_type=kl_type, input_clamp_value=input_clamp_value,
                             output_clamp_value=output_clamp_value)  # the estimate at every token
        k = every[x]
        exact_mean = float((p * every).sum())
        out[kl_type] = {
            "mean": float(k.mean()),
            "bias": float(k.mean()) - true_kl,
            "std": float(k.std()),
            "frac_negative": float((k < 0).double().mean()),
            "exact_bias": exact_mean - true_kl,
            "exact_std": float((p * (every - exact_mean).square()).sum().sqrt()),
            "exact_frac_negative": float(p[every < 0].sum()),
        }
    return out


# --------------------------------------------------------------------------------------------------
# Micro-batches and global normalisation
# --------------------------------------------------------------------------------------------------


def microbatch_reductions(
    loss_fn: Callable,
    next_token_logprobs: torch.Tensor,
    data: Mapping[str, torch.Tensor],
    num_microbatches: int,
) -> dict[str, float | list[float]]:
    """Run a NeMo-RL-protocol loss over micro-batches three ways and return the results.

    Rows are split into ``num_microbatches`` contiguous micro-batches (think: micro-batches times
    data-parallel ranks). ``data`` holds ``[B, S]`` tensors (``token_mask`` and the loss's inputs) and
    ``sample_mask`` ``[B]``.

    * ``full``: one call on the whole batch with its own counts;
    * ``global_sum``: sum of micro-batch losses, each divided by the *global* counts
      ``global_valid_toks = sum(token_mask[:, 1:] * sample_mask)`` and ``global_valid_seqs =
      sum(sample_mask)`` (NeMo RL, nemo_rl/models/automodel/data.py:404-430);
    * ``local_mean``: mean of micro-batch losses each normalised by its *own* counts (what a naive
      per-micro-batch mean, or gradient averaging across ranks, computes).
    """
    k = _check_positive_int("num_microbatches", num_microbatches)
    if "token_mask" not in data or "sample_mask" not in data:
        raise ValueError("data must contain 'token_mask' [B, S] and 'sample_mask' [B]")
    B = next_token_logprobs.shape[0]
    if k > B:
        raise ValueError(f"num_microbatches={k} exceeds the batch size {B}")

    def counts(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        sm = data["sample_mask"][rows]
        toks = (data["token_mask"][rows, 1:] * sm[:, None]).sum()
        return sm.sum(), toks

    def call(rows: slice, gs, gt) -> torch.Tensor:
        sub = {key: value[rows] for key, value in data.items()}
        loss, _ = loss_fn(next_token_logprobs=next_token_logprobs[rows], data=sub,
                          global_valid_seqs=gs, global_valid_toks=gt)
        return loss

    everything = slice(0, B)
    GS, GT = counts(everything)
    bounds = torch.linspace(0, B, k + 1).round().long().tolist()
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(k)]
    micro_global = [float(call(s, GS, GT)) for s in slices]
    micro_local = [float(call(s, *counts(s))) for s in slices]
    return {
        "full": float(call(everything, GS, GT)),
        "global_sum": sum(micro_global),
        "local_mean": sum(micro_local) / k,
        "micro_global": micro_global,
        "micro_local": micro_local,
    }


# --------------------------------------------------------------------------------------------------
# SFT: cross-entropy, forward vs reverse KL, role masks
# --------------------------------------------------------------------------------------------------


def cross_entropy_decomposition(p_data: torch.Tensor, model_logprobs: torch.Tensor) -> dict[str, float]:
    """``CE(p_data, pi) = H(p_data) + KL(p_data || pi)`` for one categorical distribution.

    ``p_data`` ``[V]`` sums to 1; ``model_logprobs`` ``[V]`` are ``log pi``. Returns the three terms
    computed independently (``0 log 0 = 0``).
    """
    if p_data.dim() != 1 or p_data.shape != model_logprobs.shape:
        raise ValueError(
            f"p_data and model_logprobs must be 1-D of equal size, got {tuple(p_data.shape)} and "
            f"{tuple(model_logprobs.shape)}"
        )
    if (p_data < 0).any() or abs(float(p_data.sum()) - 1.0) > 1e-6:
        raise ValueError("p_data must be a probability vector (non-negative, summing to 1)")
    p = p_data.double()
    logpi = model_logprobs.double()
    support = p > 0
    logp = torch.where(support, p.clamp_min(1e-300).log(), torch.zeros_like(p))
    return {
        "cross_entropy": float(-(p * torch.where(support, logpi, torch.zeros_like(p))).sum()),
        "entropy": float(-(p * logp).sum()),
        "kl": float((p * (logp - torch.where(support, logpi, torch.zeros_like(p)))).sum()),
    }


def discretised_gaussian(mean: torch.Tensor, log_std: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Log-probs ``[V]`` of a Gaussian bump over tokens ``0..V-1``: ``softmax(-(x - mean)^2 / (2 std^2))``."""
    V = _check_positive_int("vocab_size", vocab_size, 2)
    x = torch.arange(V, dtype=torch.float64)
    return torch.log_softmax(-((x - mean) ** 2) / (2 * torch.exp(2 * log_std)), -1)


def fit_discretised_gaussian(
    p_data: torch.Tensor, divergence: str, init_mean: float, init_log_std: float = 0.0, steps: int = 800
) -> dict[str, float]:
    """Fit :func:`discretised_gaussian` to ``p_data`` by minimising a KL divergence with Adam.

    ``"forward"``: ``KL(p_data || pi)`` (maximum likelihood / SFT; mass-covering).
    ``"reverse"``: ``KL(pi || p_data)`` (what a KL-regularised RL objective uses; mode-seeking).
    Returns the fitted ``mean``, ``std`` and both divergences at the optimum.
    """
    if divergence not in ("forward", "reverse"):
        raise ValueError(f"divergence must be 'forward' or 'reverse', got {divergence!r}")
    _check_positive_int("steps", steps)
    p = p_data.double()
    logp = p.clamp_min(1e-300).log()
    mean = torch.tensor(float(init_mean), dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor(float(init_log_std), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([mean, log_std], lr=0.1)

    def divergences() -> tuple[torch.Tensor, torch.Tensor]:
        logq = discretised_gaussian(mean, log_std, p.numel())
        fwd = (p * (logp - logq)).sum()
        rev = (logq.exp() * (logq - logp)).sum()
        return fwd, rev

    for _ in range(steps):
        opt.zero_grad()
        fwd, rev = divergences()
        (fwd if divergence == "forward" else rev).backward()
        opt.step()
    with torch.no_grad():
        fwd, rev = divergences()
        return {"mean": float(mean), "std": float(log_std.exp()), "forward_kl": float(fwd),
                "reverse_kl": float(rev)}


def sft_token_mask(
    turns: Sequence[tuple[str, int]],
    roles_to_train_on: Sequence[str] = ("assistant",),
    only_unmask_final: bool = False,
) -> torch.Tensor:
    """Token mask ``[sum of lengths]`` of a chat: 1 on tokens of the trained roles, else 0.

    ``turns`` lists ``(role, num_tokens)`` in order. With ``only_unmask_final`` only the last turn
    whose role is in ``roles_to_train_on`` keeps its ones. This mirrors the behaviour NeMo RL's SFT
    gets from ``roles_to_train_on=["assistant"]`` and ``sft.only_unmask_final``
    (nemo_rl/algorithms/sft.py:294-296,450-452); it is a from-scratch model, not NeMo RL's code.
    """
    if isinstance(only_unmask_final, bool) is False:
        raise TypeError(f"only_unmask_final must be a bool, got {only_unmask_final!r}")
    if isinstance(roles_to_train_on, str):
        raise TypeError("roles_to_train_on must be a sequence of role names, not a single string")
    if not turns:
        raise ValueError("turns must list at least one (role, num_tokens) pair")
    for i, turn in enumerate(turns):
        if len(turn) != 2 or not isinstance(turn[0], str):
            raise ValueError(f"turns[{i}] must be (role: str, num_tokens: int), got {turn!r}")
        _check_positive_int(f"turns[{i}] num_tokens", turn[1])
    trained = [role in roles_to_train_on for role, _ in turns]
    if only_unmask_final and any(trained):
        last = max(i for i, t in enumerate(trained) if t)
        trained = [i == last for i in range(len(turns))]
    return torch.cat([torch.full((n,), float(t)) for (_, n), t in zip(turns, trained, strict=True)])
