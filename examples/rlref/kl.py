"""Per-token KL estimators k1, k2, k3 (Schulman) with NeMo RL's clamps and importance weights.

With ``logr = logprobs_reference - logprobs`` (log pi_ref - log pi, evaluated at tokens sampled from pi):

* ``k1 = -logr``               (unbiased for KL(pi || pi_ref), high variance, can be negative)
* ``k2 = logr**2 / 2``         (biased, low variance, >= 0)
* ``k3 = exp(logr) - 1 - logr``  (unbiased, >= 0)

NeMo RL: ``calculate_kl`` (nemo_rl/algorithms/utils.py:42-101); the loss uses it through
``loss_fn.reference_policy_kl_type`` / ``kl_input_clamp_value`` / ``kl_output_clamp_value``.

An exact small sequence model (all ``V**T`` sequences enumerated) checks what gradient each
placement of the KL produces: :func:`enumerate_sequences`, :func:`tabular_logprobs` (a policy that
is a table of logits, one row per prefix), :func:`sequence_kl` (the KL between the sequence
distributions), :func:`per_position_kl` (the per-position KLs with the context distribution held
fixed) and :func:`expected_score_gradient` (the exact expectation of a score-function estimator).
"""

from __future__ import annotations

import torch

__all__ = [
    "KL_TYPES", "calculate_kl", "enumerate_sequences", "num_prefixes", "tabular_logprobs", "sequence_kl",
    "per_position_kl", "expected_score_gradient",
]

KL_TYPES = ("k1", "k2", "k3")


def _check_clamp(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value!r}")


def calculate_kl(
    logprobs: torch.Tensor,
    logprobs_reference: torch.Tensor,
    kl_type: str = "k3",
    input_clamp_value: float | None = 20.0,
    output_clamp_value: float | None = 10.0,
    importance_sampling_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-element KL estimate of KL(pi || pi_ref) from log-probs of sampled tokens.

    1. ``logr = logprobs_reference - logprobs``; if ``input_clamp_value = c_in`` is set,
       ``logr := clamp(logr, -c_in, c_in)``, and where this clamp is active the importance weight is
       stop-gradiented (``w := w.detach()`` there).
    2. ``k = k1 | k2 | k3`` of ``logr`` (see module docstring).
    3. ``k := w * k`` if ``importance_sampling_weights`` is given (before the output clamp).
    4. ``k := clamp(k, -c_out, c_out)`` if ``output_clamp_value = c_out`` is set.

    ``None`` disables a clamp. Returns a tensor of the inputs' (broadcast) shape; no reduction.

    NeMo RL: ``calculate_kl`` (nemo_rl/algorithms/utils.py:42-101), same argument names.
    """
    for name, value in (("logprobs", logprobs), ("logprobs_reference", logprobs_reference)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if logprobs.shape != logprobs_reference.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and logprobs_reference {tuple(logprobs_reference.shape)} "
            "must have the same shape"
        )
    if kl_type not in KL_TYPES:
        raise ValueError(f"kl_type must be one of {KL_TYPES}, got {kl_type!r}")
    _check_clamp("input_clamp_value", input_clamp_value)
    _check_clamp("output_clamp_value", output_clamp_value)
    w = importance_sampling_weights
    if w is not None:
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"importance_sampling_weights must be a torch.Tensor, got {type(w).__name__}")
        if not w.is_floating_point():
            raise TypeError(f"importance_sampling_weights must be a floating tensor, got dtype {w.dtype}")
        if w.shape != logprobs.shape:
            raise ValueError(
                f"importance_sampling_weights {tuple(w.shape)} must have the shape of logprobs "
                f"{tuple(logprobs.shape)}"
            )

    logr = logprobs_reference - logprobs
    if input_clamp_value is not None:
        clamped = logr.clamp(min=-input_clamp_value, max=input_clamp_value)
        if w is not None:
            w = torch.where(clamped != logr, w.detach(), w)
        logr = clamped

    if kl_type == "k1":
        kl = -logr
    elif kl_type == "k2":
        kl = 0.5 * logr.square()
    else:
        kl = torch.exp(logr) - 1 - logr

    if w is not None:
        kl = w * kl
    if output_clamp_value is not None:
        kl = kl.clamp(min=-output_clamp_value, max=output_clamp_value)
    return kl


# --------------------------------------------------------------------------------------------------
# An exact sequence model: every sequence enumerated
# --------------------------------------------------------------------------------------------------


def _check_size(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def enumerate_sequences(vocab_size: int, length: int) -> torch.Tensor:
    """All ``vocab_size**length`` token sequences ``[N, length]`` (int64), in lexicographic order."""
    _check_size("vocab_size", vocab_size, 2)
    _check_size("length", length, 1)
    if vocab_size**length > 1_000_000:
        raise ValueError(f"vocab_size**length = {vocab_size**length} sequences is too many to enumerate")
    grids = torch.meshgrid(*[torch.arange(vocab_size)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def num_prefixes(vocab_size: int, length: int) -> int:
    """Number of distinct contexts ``y_<t`` for ``t < length``: ``sum_t vocab_size**t``."""
    _check_size("vocab_size", vocab_size, 2)
    _check_size("length", length, 1)
    return sum(vocab_size**t for t in range(length))


def _prefix_rows(sequences: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Row of the logit table for each ``(n, t)``: ``sum_{t'<t} V**t'`` plus ``y_<t`` read in base V."""
    N, T = sequences.shape
    rows = torch.zeros(N, T, dtype=torch.long)
    code = torch.zeros(N, dtype=torch.long)
    offset = 0
    for t in range(T):
        rows[:, t] = offset + code
        offset += vocab_size**t
        code = code * vocab_size + sequences[:, t]
    return rows


def tabular_logprobs(logits: torch.Tensor, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_logprobs [N, T], next_token_logprobs [N, T, V])`` of an autoregressive table policy.

    ``logits`` ``[num_prefixes(V, T), V]`` holds one row per context ``y_<t`` (see
    :func:`num_prefixes`); ``pi(. | y_<t) = softmax(row)``. ``token_logprobs[n, t] =
    log pi(y_nt | y_n,<t)``; the sequence log-prob is its sum over ``t``. Differentiable in ``logits``.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        raise TypeError("logits must be a floating [num_prefixes, vocab_size] tensor")
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2 or sequences.is_floating_point():
        raise TypeError("sequences must be an integer [N, T] tensor")
    V = logits.shape[1]
    T = sequences.shape[1]
    if logits.shape[0] != num_prefixes(V, T):
        raise ValueError(
            f"logits has {logits.shape[0]} rows but sequences of length {T} over {V} tokens need "
            f"num_prefixes = {num_prefixes(V, T)}"
        )
    if sequences.numel() and (int(sequences.min()) < 0 or int(sequences.max()) >= V):
        raise ValueError(f"sequences must hold token ids in [0, {V})")
    dist = torch.log_softmax(logits, dim=-1)[_prefix_rows(sequences, V)]  # [N, T, V]
    return dist.gather(-1, sequences[..., None]).squeeze(-1), dist


def _pair(logits, ref_logits, length):
    if not isinstance(ref_logits, torch.Tensor) or ref_logits.shape != getattr(logits, "shape", None):
        raise ValueError("ref_logits must be a tensor with the shape of logits")
    seqs = enumerate_sequences(logits.shape[1], length)
    lp, dist = tabular_logprobs(logits, seqs)
    lq, ref_dist = tabular_logprobs(ref_logits, seqs)
    return lp, dist, lq, ref_dist


def sequence_kl(logits: torch.Tensor, ref_logits: torch.Tensor, length: int) -> torch.Tensor:
    """``KL(pi || pi_ref) = sum_y pi(y) [log pi(y) - log pi_ref(y)]`` over all sequences of ``length``.

    Its gradient includes the effect of ``theta`` on which contexts are visited (the future-KL terms).
    """
    lp, _, lq, _ = _pair(logits, ref_logits, length)
    seq_lp = lp.sum(1)
    return (seq_lp.exp() * (seq_lp - lq.sum(1))).sum()


def per_position_kl(logits: torch.Tensor, ref_logits: torch.Tensor, length: int) -> torch.Tensor:
    """``sum_t E_{y_<t ~ sg(pi)} KL(pi(.|y_<t) || pi_ref(.|y_<t))``: same value as :func:`sequence_kl`
    (chain rule of the KL), but the probability of each context is held fixed, so its gradient is
    only the per-position one (what a KL term in the loss optimises)."""
    lp, dist, _, ref_dist = _pair(logits, ref_logits, length)
    seq_p = lp.sum(1).exp().detach()  # held fixed: no gradient through the context distribution
    kl_t = (dist.exp() * (dist - ref_dist)).sum(-1)  # [N, T]: KL at the context y_<t of sequence n
    return (seq_p[:, None] * kl_t).sum()  # sum_t sum_y pi(y) KL_t(y_<t) = sum_t E_{y_<t}[KL_t]


def expected_score_gradient(logits: torch.Tensor, sequences: torch.Tensor, token_weights: torch.Tensor
                            ) -> torch.Tensor:
    """Exact ``E_{y~pi}[ sum_t w_t(y) grad log pi(y_t | y_<t) ]`` w.r.t. ``logits`` (``w`` held fixed).

    ``sequences`` must be all of :func:`enumerate_sequences` (every ``y``, each once), and
    ``token_weights`` ``[N, T]`` the per-token weight of each (an advantage; no gradient flows
    through it). This is the expectation of the REINFORCE estimator with advantages ``w``.
    """
    if not isinstance(token_weights, torch.Tensor) or token_weights.shape != sequences.shape:
        raise ValueError(f"token_weights must be a tensor of shape {tuple(sequences.shape)}")
    V = logits.shape[1]
    if sequences.shape[0] != V ** sequences.shape[1]:
        raise ValueError("sequences must be every sequence (enumerate_sequences(vocab_size, length))")
    leaf = logits.detach().requires_grad_(True)
    lp, _ = tabular_logprobs(leaf, sequences)
    p = lp.sum(1).exp().detach()
    objective = (p[:, None] * token_weights.detach().to(lp.dtype) * lp).sum()
    (grad,) = torch.autograd.grad(objective, leaf)
    return grad
