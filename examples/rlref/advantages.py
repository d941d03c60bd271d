"""Advantage estimators and reward scaling, written from the formulas NeMo RL implements.

Every function takes plain tensors and keyword arguments spelled like NeMo RL's config keys, so a
config such as ``grpo.adv_estimator.use_leave_one_out_baseline: false`` maps onto
``grpo_advantages(..., use_leave_one_out_baseline=False)``.

Shapes: ``B`` rows (one sampled response each), ``S`` token positions, ``L`` prompt length.

* ``prompt_ids`` ``[B, L]`` integer: rows with identical prompt tokens form one group (duplicate
  prompts in a batch therefore form a single group).
* ``rewards`` ``[B]`` floating: one scalar reward per response.
* ``mask`` ``[B, S]``: NeMo RL's ``token_mask * sample_mask``. The group estimators use only its shape
  (the per-row advantage is broadcast to every column, masked or not); Reinforce++, raw-reward and GAE
  also use its values.

Arithmetic runs in float64 and results come back in the dtype of ``rewards``; NeMo RL computes in
float32, so results agree to float32 rounding (checked against NeMo RL's own outputs by
``tests/test_golden_parity.py``).

NeMo RL counterparts (commit 7ea279abf): ``calculate_baseline_and_std_per_prompt``
(nemo_rl/algorithms/utils.py:104-198); ``GRPOAdvantageEstimator``, ``GDPOAdvantageEstimator``,
``ReinforcePlusPlusAdvantageEstimator``, ``RawRewardAdvantageEstimator``,
``GeneralizedAdvantageEstimator``, ``OPDAdvantageEstimator``
(nemo_rl/algorithms/advantage_estimator.py:57, 101, 193, 270, 302, 551; config class
``AdvEstimatorConfig`` at lines 44-54); advantage clipping and ``scale_rewards``
(nemo_rl/algorithms/grpo.py:2302-2313 and 1831-1874); the OPD set-up checks and teacher padding
(nemo_rl/algorithms/grpo.py:2273-2290 and 2227-2246).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from rlref.kl import KL_TYPES, calculate_kl

__all__ = [
    "GRPO_STD_EPS",
    "baseline_and_std_per_prompt",
    "clip_advantages",
    "gae_advantages",
    "gdpo_advantages",
    "grpo_advantages",
    "group_ids",
    "opd_advantages",
    "opd_loss_fn_recommendations",
    "opd_metrics",
    "pad_teacher_logprobs",
    "raw_reward_advantages",
    "reinforce_plus_plus_advantages",
    "scale_rewards",
]

#: Added to the group std before dividing (GRPO and GDPO components): ``a / (std + 1e-6)``.
GRPO_STD_EPS = 1e-6
#: Floor on the variance in the Reinforce++ / raw-reward whitening: ``rsqrt(max(var, 1e-8))``.
WHITEN_VAR_FLOOR = 1e-8
#: GAE whitening: ``var + 1e-8`` inside the rsqrt and ``N + 1e-8`` in the means.
GAE_EPS = 1e-8

_F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_prompt_ids(prompt_ids: object, allow_empty: bool = False) -> torch.Tensor:
    prompt_ids = _tensor("prompt_ids", prompt_ids)
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be a 2-D [B, L] tensor, got shape {tuple(prompt_ids.shape)}")
    if prompt_ids.is_floating_point() or prompt_ids.is_complex() or prompt_ids.dtype == torch.bool:
        raise TypeError(f"prompt_ids must be an integer tensor (token ids), got dtype {prompt_ids.dtype}")
    if prompt_ids.shape[0] == 0 and not allow_empty:
        raise ValueError("prompt_ids is empty: the batch must hold at least one row")
    return prompt_ids


def _check_rows(
    name: str, value: object, batch: int | None = None, allow_empty: bool = False
) -> torch.Tensor:
    """A floating ``[B]`` tensor (one value per row)."""
    value = _tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if value.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D [B] tensor (one value per row), got shape {tuple(value.shape)}"
        )
    if value.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: the batch must hold at least one row")
    if batch is not None and value.shape[0] != batch:
        raise ValueError(
            f"{name} has {value.shape[0]} rows, expected B = {batch} (shape {tuple(value.shape)})"
        )
    return value


def _check_mask(name: str, mask: object, batch: int) -> torch.Tensor:
    """A ``[B, S]`` 0/1 mask (floating or bool)."""
    mask = _tensor(name, mask)
    if mask.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [B, S] tensor, got shape {tuple(mask.shape)}")
    if mask.shape[0] != batch:
        raise ValueError(
            f"{name} has {mask.shape[0]} rows but rewards has B = {batch} (shape {tuple(mask.shape)})"
        )
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise TypeError(f"{name} must be a floating or bool tensor, got dtype {mask.dtype}")
    return mask


def _check_bsd(name: str, value: object, shape: torch.Size) -> torch.Tensor:
    """A floating tensor with exactly ``shape`` (``[B, S]``)."""
    value = _tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name} must have the shape of mask {tuple(shape)}, got {tuple(value.shape)}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _check_number(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = "a number or None" if allow_none else "a number"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_unit_interval(name: str, value: object, *, allow_none: bool = False) -> float | None:
    value = _check_number(name, value, allow_none=allow_none)
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return value


def _check_kl_args(use_kl_in_reward, reference_policy_kl_penalty, reference_policy_kl_type) -> float:
    _check_bool("use_kl_in_reward", use_kl_in_reward)
    beta = _check_number("reference_policy_kl_penalty", reference_policy_kl_penalty)
    if beta < 0:
        raise ValueError(f"reference_policy_kl_penalty must be >= 0, got {beta!r}")
    if reference_policy_kl_type not in KL_TYPES:
        raise ValueError(
            f"reference_policy_kl_type must be one of {KL_TYPES}, got {reference_policy_kl_type!r}"
        )
    return beta


def _kl_logprobs(use_kl_in_reward, logprobs_policy, logprobs_reference, shape: torch.Size):
    """Validate the optional log-prob pair; both are required when ``use_kl_in_reward`` is on."""
    given = [x is not None for x in (logprobs_policy, logprobs_reference)]
    if use_kl_in_reward and not all(given):
        raise ValueError(
            "use_kl_in_reward=True needs both logprobs_policy and logprobs_reference ([B, S]); "
            "NeMo RL silently skips the KL term when they are missing"
        )
    if any(given) and not all(given):
        raise ValueError("pass both logprobs_policy and logprobs_reference, or neither")
    if all(given):
        _check_bsd("logprobs_policy", logprobs_policy, shape)
        _check_bsd("logprobs_reference", logprobs_reference, shape)


# --------------------------------------------------------------------------------------------------
# Groups, baseline and std (GRPO family)
# --------------------------------------------------------------------------------------------------


def group_ids(prompt_ids: torch.Tensor) -> torch.Tensor:
    """Group index ``[B]`` of every row of ``prompt_ids`` (0..G-1, numbered in sorted order of the rows).

    Rows with identical prompt token ids get the same index, wherever they sit in the batch.
    """
    prompt_ids = _check_prompt_ids(prompt_ids)
    _, inverse = torch.unique(prompt_ids, dim=0, return_inverse=True)
    return inverse


def baseline_and_std_per_prompt(
    prompt_ids: torch.Tensor,
    rewards: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    leave_one_out_baseline: bool = True,
    std_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row group baseline and group std of the rewards.

    For a group of ``n`` rows with valid flags ``v`` (``valid_mask``, default all 1), rewards ``r`` and
    std-rewards ``q`` (``std_rewards`` if given, else ``r``), let ``V = sum(v)``:

    * ``V <= 1``: ``baseline = r`` (each row its own reward, so its advantage is 0) and ``std = 0``.
    * otherwise ``k = V - 1`` with leave-one-out (``M = 1 - I``) or ``k = V`` without (``M`` = all ones):

      ``baseline = M (r * v) / k``,   ``mu_q = M (q * v) / k``,   ``sq = M (q**2 * v) / k``,
      ``std = sqrt((sq - mu_q**2) * k / (k - 1))``, with NaN replaced by 0.

    So with leave-one-out a row's baseline is the mean of the *other* valid rows and its std their
    Bessel-corrected std; without, the mean and Bessel-corrected std of all valid rows. A group of two
    with leave-one-out has ``k = 1``: ``0 * inf = NaN``, so its std is 0. Invalid rows (``v = 0``)
    still get a value from the same formula (their ``M`` row sums over all valid rows).
    ``std_rewards`` (DAPO passes the reward before shaping) changes only the std, not the baseline.

    Returns ``(baseline [B], std [B])`` in the dtype of ``rewards``; an empty batch (``B = 0``) gives
    two empty tensors, as in NeMo RL.

    NeMo RL: ``calculate_baseline_and_std_per_prompt`` (nemo_rl/algorithms/utils.py:104-198); config
    ``grpo.use_leave_one_out_baseline`` (``grpo.adv_estimator.use_leave_one_out_baseline``).
    """
    prompt_ids = _check_prompt_ids(prompt_ids, allow_empty=True)
    batch = prompt_ids.shape[0]
    rewards = _check_rows("rewards", rewards, batch, allow_empty=True)
    _check_bool("leave_one_out_baseline", leave_one_out_baseline)
    if batch == 0:
        return rewards.clone(), rewards.clone()
    # Work in the rewards' own precision (at least fp32), as NeMo RL does: the float quirks match.
    work = rewards.dtype if rewards.dtype in (torch.float32, torch.float64) else torch.float32
    if valid_mask is None:
        v = torch.ones(batch, dtype=work, device=rewards.device)
    else:
        valid_mask = _tensor("valid_mask", valid_mask)
        if valid_mask.shape != (batch,):
            raise ValueError(f"valid_mask must be [B] = ({batch},), got shape {tuple(valid_mask.shape)}")
        if not (valid_mask.is_floating_point() or valid_mask.dtype == torch.bool):
            raise TypeError(f"valid_mask must be a floating or bool tensor, got dtype {valid_mask.dtype}")
        v = valid_mask.to(work)
    r = rewards.to(work)
    q = r if std_rewards is None else _check_rows("std_rewards", std_rewards, batch).to(work)

    # M: 1 where two rows share a prompt (minus the identity for leave-one-out). Summing the other rows
    # explicitly (M @ x), never as "group total - own value", keeps a group of equal others exact: its
    # variance is then exactly 0, not a round-off residue that normalisation would blow up.
    g = group_ids(prompt_ids).to(rewards.device)
    same = (g[:, None] == g[None, :]).to(work)
    mat = same - torch.eye(batch, dtype=work, device=rewards.device) if leave_one_out_baseline else same

    n_valid = same @ v
    k = n_valid - 1.0 if leave_one_out_baseline else n_valid
    small = n_valid <= 1
    k_safe = torch.where(small, torch.ones_like(k), k)  # the V <= 1 rows are overwritten below

    baseline = mat @ (r * v) / k_safe
    mean_q = baseline if std_rewards is None else mat @ (q * v) / k_safe
    second_moment = mat @ (q * q * v) / k_safe
    # k / (k - 1) is +inf for k = 1 (float division), giving NaN for a zero variance, as in NeMo RL;
    # nan_to_num then maps NaN to 0 and +inf to the largest finite value (torch's default).
    bessel = k_safe / (k_safe - 1.0)
    std = torch.nan_to_num(torch.sqrt((second_moment - mean_q.square()) * bessel), nan=0.0)

    baseline = torch.where(small, r, baseline)
    std = torch.where(small, torch.zeros_like(std), std)
    return baseline.to(rewards.dtype), std.to(rewards.dtype)


def _group_normalized(prompt_ids, rewards, normalize_rewards: bool, use_leave_one_out_baseline: bool):
    """``a = r - baseline``, divided by ``std + 1e-6`` where ``std > 0`` (float64, ``[B]``)."""
    baseline, std = baseline_and_std_per_prompt(
        prompt_ids, rewards, leave_one_out_baseline=use_leave_one_out_baseline
    )
    a = rewards.to(_F64) - baseline.to(_F64)
    if normalize_rewards:
        s = std.to(_F64)
        a = torch.where(s > 0, a / (s + GRPO_STD_EPS), a)
    return a


def grpo_advantages(
    prompt_ids: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    normalize_rewards: bool = True,
    use_leave_one_out_baseline: bool = True,
) -> torch.Tensor:
    """GRPO advantage ``[B, S]``: the group-relative reward, broadcast to every token.

    ``a_b = r_b - baseline_b`` (baseline and std from :func:`baseline_and_std_per_prompt`, all rows
    valid). If ``normalize_rewards``: ``a_b := a_b / (std_b + 1e-6)`` **only where** ``std_b > 0``;
    rows with ``std_b = 0`` keep the unnormalised difference. With leave-one-out the std is that of
    the *other* rows, so in a group ``[1, 0, 0]`` the ``1`` row (others ``[0, 0]``, std 0) gets
    advantage ``1``, while each ``0`` row gets ``-0.5 / (0.7071 + 1e-6)``; groups of two are never
    normalised. ``advantages[b, :] = a_b`` on all ``S`` columns: ``mask`` gives only the shape (the
    loss applies the mask later).

    NeMo RL: ``GRPOAdvantageEstimator.compute_advantage``
    (nemo_rl/algorithms/advantage_estimator.py:57-98); config ``grpo.adv_estimator.name: grpo``,
    ``grpo.adv_estimator.normalize_rewards`` (default true), ``grpo.adv_estimator.use_leave_one_out_baseline``
    (default true); both interpolate ``grpo.normalize_rewards`` / ``grpo.use_leave_one_out_baseline``.
    """
    prompt_ids = _check_prompt_ids(prompt_ids)
    rewards = _check_rows("rewards", rewards, prompt_ids.shape[0])
    mask = _check_mask("mask", mask, prompt_ids.shape[0])
    _check_bool("normalize_rewards", normalize_rewards)
    _check_bool("use_leave_one_out_baseline", use_leave_one_out_baseline)
    a = _group_normalized(prompt_ids, rewards, normalize_rewards, use_leave_one_out_baseline)
    return a[:, None].expand(mask.shape).to(rewards.dtype).clone()


def clip_advantages(
    advantages: torch.Tensor,
    advantage_clip_low: float | None = None,
    advantage_clip_high: float | None = None,
) -> torch.Tensor:
    """``clamp(advantages, advantage_clip_low, advantage_clip_high)``; a ``None`` bound is not applied.

    NeMo RL: ``_clip_grpo_advantages`` (nemo_rl/algorithms/grpo.py:2302-2313), applied to the final
    advantages; config ``grpo.advantage_clip_low`` / ``grpo.advantage_clip_high`` (default null).
    """
    advantages = _tensor("advantages", advantages)
    if not advantages.is_floating_point():
        raise TypeError(f"advantages must be a floating tensor, got dtype {advantages.dtype}")
    low = _check_number("advantage_clip_low", advantage_clip_low, allow_none=True)
    high = _check_number("advantage_clip_high", advantage_clip_high, allow_none=True)
    if low is not None and high is not None and low > high:
        raise ValueError(f"advantage_clip_low ({low!r}) must be <= advantage_clip_high ({high!r})")
    if low is None and high is None:
        return advantages.clone()
    return advantages.clamp(min=low, max=high)


def gdpo_advantages(
    prompt_ids: torch.Tensor,
    reward_components: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
    normalize_rewards: bool = True,
    use_leave_one_out_baseline: bool = True,
    reward_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """GDPO advantage ``[B, S]``: group-normalise each reward component, weight, re-normalise the sum.

    For each component key ``k`` in **sorted** order: ``a_k = r_k - baseline_k``, divided by
    ``std_k + 1e-6`` where ``std_k > 0`` if ``normalize_rewards`` (exactly the GRPO advantage of that
    component). Then ``A = sum_k w_k a_k`` with ``w = reward_weights`` listed in sorted-key order
    (default all 1), and ``A`` is re-normalised over the batch whatever ``normalize_rewards`` says:
    ``s = std(A)`` over the ``B`` rows with Bessel's correction; ``A := (A - mean A) / s`` if ``s > 0``,
    else ``A - mean A``. Broadcast to every column of ``mask``.

    ``reward_components`` maps names (NeMo RL uses ``"reward/<name>"`` keys) to ``[B]`` tensors; at
    least two are required, as in NeMo RL.

    NeMo RL: ``GDPOAdvantageEstimator`` (nemo_rl/algorithms/advantage_estimator.py:101-190); config
    ``grpo.adv_estimator.name: gdpo``, ``grpo.adv_estimator.reward_weights`` (default null),
    ``normalize_rewards``, ``use_leave_one_out_baseline``.
    """
    prompt_ids = _check_prompt_ids(prompt_ids)
    batch = prompt_ids.shape[0]
    if not isinstance(reward_components, Mapping):
        raise TypeError(
            f"reward_components must be a dict name -> [B] tensor, got {type(reward_components).__name__}"
        )
    if len(reward_components) < 2:
        raise ValueError(
            f"GDPO needs at least 2 reward components, got {len(reward_components)}: "
            f"{sorted(reward_components)}"
        )
    keys = sorted(reward_components)
    comps = {k: _check_rows(f"reward_components[{k!r}]", reward_components[k], batch) for k in keys}
    mask = _check_mask("mask", mask, batch)
    _check_bool("normalize_rewards", normalize_rewards)
    _check_bool("use_leave_one_out_baseline", use_leave_one_out_baseline)
    if reward_weights is None:
        weights = [1.0] * len(keys)
    else:
        if isinstance(reward_weights, (str, bytes)) or not isinstance(reward_weights, Sequence):
            raise TypeError(
                f"reward_weights must be a list of numbers or None, got {type(reward_weights).__name__}"
            )
        if len(reward_weights) != len(keys):
            raise ValueError(
                f"reward_weights has {len(reward_weights)} entries but there are {len(keys)} reward "
                f"components {keys} (weights are matched to the sorted component names)"
            )
        weights = [_check_number(f"reward_weights[{i}]", w) for i, w in enumerate(reward_weights)]
    dtype = comps[keys[0]].dtype
    total = torch.zeros(batch, dtype=_F64, device=comps[keys[0]].device)
    for w, k in zip(weights, keys, strict=True):
        total = total + w * _group_normalized(
            prompt_ids, comps[k], normalize_rewards, use_leave_one_out_baseline
        )
    centered = total - total.mean()
    s = total.std(unbiased=True) if batch > 1 else torch.zeros((), dtype=_F64)
    out = centered / s if s > 0 else centered
    return out[:, None].expand(mask.shape).to(dtype).clone()


# --------------------------------------------------------------------------------------------------
# Reinforce++ and raw reward (batch whitening)
# --------------------------------------------------------------------------------------------------


def _whiten(a: torch.Tensor, m: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``(a - mu) * rsqrt(max(var, 1e-8))`` with ``mu = sum(a m)/count``, ``var = sum((a-mu)^2 m)/count``."""
    mu = (a * m).sum() / count
    var = ((a - mu).square() * m).sum() / count
    return (a - mu) * torch.rsqrt(var.clamp(min=WHITEN_VAR_FLOOR))


def reinforce_plus_plus_advantages(
    prompt_ids: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    minus_baseline: bool = True,
    use_kl_in_reward: bool = False,
    reference_policy_kl_penalty: float = 0.01,
    reference_policy_kl_type: str = "k3",
    logprobs_policy: torch.Tensor | None = None,
    logprobs_reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reinforce++ advantage ``[B, S]``: (group-mean-centred) reward minus token KL, whitened over the batch.

    1. ``a_b = r_b - mean of its group`` (plain group mean, never leave-one-out) if ``minus_baseline``,
       else ``a_b = r_b``; broadcast to ``[B, S]``.
    2. If ``use_kl_in_reward``: ``a := a - reference_policy_kl_penalty * calculate_kl(logprobs_policy,
       logprobs_reference, reference_policy_kl_type)`` per token (default clamps 20 / 10).
    3. Whitening over the valid tokens: ``mu = sum(a m) / sum(m)``, ``var = sum((a - mu)^2 m) / sum(m)``
       (biased), ``a := (a - mu) * rsqrt(max(var, 1e-8))``. Masked positions are transformed too, not
       zeroed.

    NeMo RL: ``ReinforcePlusPlusAdvantageEstimator`` (nemo_rl/algorithms/advantage_estimator.py:193-267);
    config ``grpo.adv_estimator.name: reinforce_plus_plus``, ``grpo.adv_estimator.minus_baseline``
    (default true), and ``loss_fn.use_kl_in_reward``, ``loss_fn.reference_policy_kl_penalty``,
    ``loss_fn.reference_policy_kl_type``. Unlike NeMo RL (which skips the KL term silently), this
    raises if ``use_kl_in_reward`` is on and the log-probs are missing.
    """
    prompt_ids = _check_prompt_ids(prompt_ids)
    batch = prompt_ids.shape[0]
    rewards = _check_rows("rewards", rewards, batch)
    mask = _check_mask("mask", mask, batch)
    _check_bool("minus_baseline", minus_baseline)
    beta = _check_kl_args(use_kl_in_reward, reference_policy_kl_penalty, reference_policy_kl_type)
    _kl_logprobs(use_kl_in_reward, logprobs_policy, logprobs_reference, mask.shape)
    m = mask.to(_F64)
    n = m.sum()
    if n == 0:
        raise ValueError("mask has no valid token: Reinforce++ whitening divides by sum(mask)")
    if minus_baseline:
        baseline, _ = baseline_and_std_per_prompt(prompt_ids, rewards, leave_one_out_baseline=False)
        a = rewards.to(_F64) - baseline.to(_F64)
    else:
        a = rewards.to(_F64)
    a = a[:, None].expand(mask.shape)
    if use_kl_in_reward:
        kl = calculate_kl(
            logprobs_policy.to(_F64), logprobs_reference.to(_F64), kl_type=reference_policy_kl_type
        )
        a = a - beta * kl
    return _whiten(a, m, n).to(rewards.dtype)


def raw_reward_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, normalize_advantages: bool = True
) -> torch.Tensor:
    """Raw-reward advantage ``[B, S]``: ``a = r`` broadcast, optionally whitened over the valid tokens.

    With ``normalize_advantages``: ``N = max(sum(m), 1)``, ``mu = sum(a m) / N``,
    ``var = sum((a - mu)^2 m) / N``, ``a := (a - mu) * rsqrt(max(var, 1e-8))`` (masked positions are
    transformed too).

    NeMo RL: ``RawRewardAdvantageEstimator`` (nemo_rl/algorithms/advantage_estimator.py:270), PPO's
    ``adv_estimator.name: raw_reward``; config ``adv_estimator.normalize_advantages``.
    """
    rewards = _check_rows("rewards", rewards)
    mask = _check_mask("mask", mask, rewards.shape[0])
    _check_bool("normalize_advantages", normalize_advantages)
    a = rewards.to(_F64)[:, None].expand(mask.shape)
    if normalize_advantages:
        m = mask.to(_F64)
        a = _whiten(a, m, m.sum().clamp(min=1.0))
    return a.to(rewards.dtype).clone()


# --------------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------------


def _gae(
    token_rewards: torch.Tensor, values: torch.Tensor, m: torch.Tensor, gamma: float, lam
) -> torch.Tensor:
    """Backward GAE over ``[B, S]``; ``lam`` is a float or a ``[B]`` tensor. Masked steps are skipped:
    they carry the next valid step's value and running advantage unchanged."""
    batch, seq = values.shape
    lam = torch.as_tensor(lam, dtype=_F64, device=values.device).expand(batch)
    next_value = torch.zeros(batch, dtype=_F64, device=values.device)
    running = torch.zeros(batch, dtype=_F64, device=values.device)
    out = torch.zeros_like(values)
    for t in range(seq - 1, -1, -1):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        valid = m[:, t] > 0
        next_value = torch.where(valid, values[:, t], next_value)
        running = torch.where(valid, candidate, running)
        out[:, t] = running
    return out


def gae_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor,
    gae_lambda: float = 0.95,
    gae_gamma: float = 1.0,
    normalize_advantages: bool = True,
    gae_lambda_value: float | None = None,
    gae_lambda_policy: float | None = None,
    length_adaptive_alpha: float = 0.0,
    use_kl_in_reward: bool = False,
    reference_policy_kl_penalty: float = 0.01,
    reference_policy_kl_type: str = "k3",
    logprobs_policy: torch.Tensor | None = None,
    logprobs_reference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation for PPO; returns ``(advantages [B, S], returns [B, S])``.

    Token rewards: ``R = 0``; if ``use_kl_in_reward`` and ``reference_policy_kl_penalty = beta > 0``:
    ``R -= beta * calculate_kl(logprobs_policy, logprobs_reference, reference_policy_kl_type)``; the
    sequence reward ``r_b`` is added at the row's last valid token; then ``R := R * m``.

    ``GAE(lambda)``, backwards over ``t = S-1 .. 0`` with ``next_value = 0``, ``g = 0``:
    ``delta_t = R_t + gamma * next_value - V_t``, ``g' = delta_t + gamma * lambda * g``; at a valid
    token ``next_value := V_t``, ``g := g'``; at a masked one both carry over unchanged;
    ``A_t = g``. So ``A_t = sum_l (gamma lambda)^l delta_{t+l}`` over the valid tokens.

    Lambdas: ``lambda_value = gae_lambda_value`` if set, else ``gae_lambda``. ``lambda_policy`` =
    per row ``clamp(1 - 1/max(alpha * len_b, 1), 0, 1)`` (``len_b = sum_t m_bt``) if
    ``length_adaptive_alpha = alpha > 0`` (VAPO), else ``gae_lambda_policy`` if set, else ``gae_lambda``.
    If any of the three decoupling keys is set, ``returns = GAE(lambda_value) + V`` and
    ``advantages = GAE(lambda_policy)``; otherwise both come from ``GAE(gae_lambda)``.

    If ``normalize_advantages``: ``N = sum(m)``, ``mu = sum(A m)/(N + 1e-8)``,
    ``var = [sum((A - mu)^2 m)/(N + 1e-8)] * N/(N - 1)``, ``A := (A - mu) * rsqrt(var + 1e-8)``.
    Finally ``A := 0`` where ``m = 0``; ``returns`` is neither whitened nor masked.

    NeMo RL: ``GeneralizedAdvantageEstimator`` (nemo_rl/algorithms/advantage_estimator.py:302-548), PPO's
    ``adv_estimator.name: gae``; config ``adv_estimator.gae_lambda`` (0.95), ``gae_gamma`` (1),
    ``normalize_advantages`` (true), ``gae_lambda_value`` / ``gae_lambda_policy`` (null),
    ``length_adaptive_alpha`` (0.0), and ``loss_fn.use_kl_in_reward``,
    ``loss_fn.reference_policy_kl_penalty``, ``loss_fn.reference_policy_kl_type``.
    """
    rewards = _check_rows("rewards", rewards)
    batch = rewards.shape[0]
    mask = _check_mask("mask", mask, batch)
    values = _check_bsd("values", values, mask.shape)
    lam = _check_unit_interval("gae_lambda", gae_lambda)
    gamma = _check_unit_interval("gae_gamma", gae_gamma)
    _check_bool("normalize_advantages", normalize_advantages)
    lam_value = _check_unit_interval("gae_lambda_value", gae_lambda_value, allow_none=True)
    lam_policy = _check_unit_interval("gae_lambda_policy", gae_lambda_policy, allow_none=True)
    alpha = _check_number("length_adaptive_alpha", length_adaptive_alpha)
    if alpha < 0:
        raise ValueError(f"length_adaptive_alpha must be >= 0, got {alpha!r}")
    beta = _check_kl_args(use_kl_in_reward, reference_policy_kl_penalty, reference_policy_kl_type)
    _kl_logprobs(use_kl_in_reward, logprobs_policy, logprobs_reference, mask.shape)

    m = mask.to(_F64)
    v = values.to(_F64)
    seq = mask.shape[1]
    if seq == 0:
        raise ValueError(f"mask has no columns (shape {tuple(mask.shape)}): GAE needs at least one token")

    token_rewards = torch.zeros_like(v)
    if use_kl_in_reward and beta > 0:
        kl = calculate_kl(
            logprobs_policy.to(_F64), logprobs_reference.to(_F64), kl_type=reference_policy_kl_type
        )
        token_rewards = token_rewards - beta * kl
    has_token = m.sum(dim=1) > 0
    positions = torch.arange(seq, device=mask.device).expand(mask.shape)
    last = torch.where(m > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
    rows = torch.nonzero(has_token).squeeze(1)
    token_rewards[rows, last[rows]] += rewards.to(_F64)[rows]
    token_rewards = token_rewards * m

    decoupled = lam_value is not None or lam_policy is not None or alpha > 0
    if decoupled:
        if alpha > 0:
            length = m.sum(dim=1)
            lam_pol = (1.0 - 1.0 / (alpha * length).clamp(min=1.0)).clamp(0.0, 1.0)
        else:
            lam_pol = lam_policy if lam_policy is not None else lam
        lam_val = lam_value if lam_value is not None else lam
        returns = _gae(token_rewards, v, m, gamma, lam_val) + v
        adv = _gae(token_rewards, v, m, gamma, lam_pol)
    else:
        adv = _gae(token_rewards, v, m, gamma, lam)
        returns = adv + v

    if normalize_advantages:
        n = m.sum()
        if n < 2:
            raise ValueError(
                "normalize_advantages needs at least 2 valid tokens in mask (Bessel factor N/(N-1)), "
                f"got {int(n)}"
            )
        mu = (adv * m).sum() / (n + GAE_EPS)
        var = ((adv - mu).square() * m).sum() / (n + GAE_EPS) * n / (n - 1)
        adv = (adv - mu) * torch.rsqrt(var + GAE_EPS)
    adv = adv * (m > 0)
    return adv.to(rewards.dtype), returns.to(rewards.dtype)


# --------------------------------------------------------------------------------------------------
# On-policy distillation (OPD / MOPD)
# --------------------------------------------------------------------------------------------------


def _check_opd_inputs(mask, teacher_logprobs, prev_logprobs) -> torch.Tensor:
    if teacher_logprobs is None:
        raise ValueError("OPD requires teacher_logprobs ([B, S] teacher log-probs of the sampled tokens)")
    if prev_logprobs is None:
        raise ValueError("OPD requires prev_logprobs ([B, S] student log-probs from the training engine)")
    mask = _tensor("mask", mask)
    if mask.dim() != 2:
        raise ValueError(f"mask must be a 2-D [B, S] tensor, got shape {tuple(mask.shape)}")
    mask = _check_mask("mask", mask, mask.shape[0])
    _check_bsd("teacher_logprobs", teacher_logprobs, mask.shape)
    _check_bsd("prev_logprobs", prev_logprobs, mask.shape)
    return mask


def opd_advantages(
    mask: torch.Tensor, teacher_logprobs: torch.Tensor, prev_logprobs: torch.Tensor
) -> torch.Tensor:
    """On-policy distillation advantage ``[B, S]``: ``A_t = sg[log pi_T(y_t) - log pi_S(y_t)] * m_t``.

    ``pi_T`` is the teacher, ``pi_S`` the student (its training-engine log-probs). A per-token
    advantage with no reward, no baseline and no normalisation: positive where the teacher
    gives the sampled token more probability than the student did, zero at masked positions (the
    mask's values multiply, so a fractional mask scales). Returned detached (the stop-gradient).

    NeMo RL: ``OPDAdvantageEstimator.compute_advantage`` (nemo_rl/algorithms/advantage_estimator.py:551-611);
    config ``grpo.adv_estimator.name: opd``. The prompt ids and rewards NeMo passes are unused there.
    """
    mask = _check_opd_inputs(mask, teacher_logprobs, prev_logprobs)
    gap = (teacher_logprobs.to(_F64) - prev_logprobs.to(_F64)).detach()
    return (gap * mask.to(_F64)).to(teacher_logprobs.dtype)


def opd_metrics(
    mask: torch.Tensor, teacher_logprobs: torch.Tensor, prev_logprobs: torch.Tensor
) -> dict[str, float]:
    """The three numbers NeMo RL logs for OPD, over the positions where ``mask != 0``.

    ``teacher_student_logprob_gap_mean`` = mean of ``log pi_teacher - log pi_student``; ``adv_mean`` /
    ``adv_std`` = mean / Bessel std of :func:`opd_advantages`; a mean over no position is 0, a std over
    fewer than two is 0. Keys carry NeMo RL's ``on_policy_distillation/`` prefix.

    NeMo RL: ``OPDAdvantageEstimator._compute_metrics`` (nemo_rl/algorithms/advantage_estimator.py:613-627),
    read from ``last_metrics``.
    """
    mask = _check_opd_inputs(mask, teacher_logprobs, prev_logprobs)
    valid = mask != 0
    gap = (teacher_logprobs.to(_F64) - prev_logprobs.to(_F64)).detach()[valid]
    adv = opd_advantages(mask, teacher_logprobs, prev_logprobs).to(_F64)[valid]
    return {
        "on_policy_distillation/teacher_student_logprob_gap_mean": float(gap.mean()) if gap.numel() else 0.0,
        "on_policy_distillation/adv_mean": float(adv.mean()) if adv.numel() else 0.0,
        "on_policy_distillation/adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
    }


def opd_loss_fn_recommendations(
    disable_ppo_ratio: bool,
    use_importance_sampling_correction: bool,
    truncated_importance_sampling_type: str | None,
) -> list[str]:
    """The ``loss_fn`` settings MOPD recommends that a config lacks (empty list when it has them all).

    Recommended: ``disable_ppo_ratio: true`` (a REINFORCE-style loss), ``use_importance_sampling_correction:
    true`` and ``truncated_importance_sampling_type: icepop`` (the hard gate on the
    training/inference ratio). One message per missing setting, naming the key.

    NeMo RL: the ``opd`` branch of ``_create_advantage_estimator`` (nemo_rl/algorithms/grpo.py:2273-2290)
    issues these as ``warnings.warn`` at set-up; it does not refuse the config.
    """
    _check_bool("disable_ppo_ratio", disable_ppo_ratio)
    _check_bool("use_importance_sampling_correction", use_importance_sampling_correction)
    if truncated_importance_sampling_type is not None and not isinstance(
        truncated_importance_sampling_type, str
    ):
        raise TypeError(
            "truncated_importance_sampling_type must be a str or None, got "
            f"{type(truncated_importance_sampling_type).__name__}"
        )
    out = []
    if not disable_ppo_ratio:
        out.append("OPD recommends loss_fn.disable_ppo_ratio: true (REINFORCE-style loss)")
    if not use_importance_sampling_correction:
        out.append("OPD recommends loss_fn.use_importance_sampling_correction: true")
    if truncated_importance_sampling_type != "icepop":
        out.append(
            "OPD recommends loss_fn.truncated_importance_sampling_type: 'icepop' (hard gate), got "
            f"{truncated_importance_sampling_type!r}"
        )
    return out


def pad_teacher_logprobs(teacher_logprobs: torch.Tensor, train_seq_len: int) -> torch.Tensor:
    """Right-pad teacher log-probs ``[B, S_t]`` with zeros to ``[B, train_seq_len]``.

    ``S_t < train_seq_len``: zeros appended (harmless: the mask zeroes those positions in
    :func:`opd_advantages`); ``S_t == train_seq_len``: returned unchanged; ``S_t > train_seq_len``:
    ``ValueError`` (the teacher batch is longer than the training batch).

    NeMo RL: ``_pad_teacher_logprobs`` (nemo_rl/algorithms/grpo.py:2227-2246).
    """
    teacher_logprobs = _tensor("teacher_logprobs", teacher_logprobs)
    if teacher_logprobs.dim() != 2:
        raise ValueError(
            f"teacher_logprobs must be a 2-D [B, S] tensor, got shape {tuple(teacher_logprobs.shape)}"
        )
    if isinstance(train_seq_len, bool) or not isinstance(train_seq_len, int):
        raise TypeError(f"train_seq_len must be an int, got {type(train_seq_len).__name__}")
    s_t = teacher_logprobs.shape[1]
    if s_t > train_seq_len:
        raise ValueError(
            f"teacher_logprobs seq length ({s_t}) > train_seq_len ({train_seq_len}): the teacher batch "
            "must not be longer than the training batch"
        )
    if s_t == train_seq_len:
        return teacher_logprobs
    return torch.nn.functional.pad(teacher_logprobs, (0, train_seq_len - s_t), value=0.0)


# --------------------------------------------------------------------------------------------------
# Reward scaling
# --------------------------------------------------------------------------------------------------


def scale_rewards(
    rewards: torch.Tensor,
    source_min: float = 0.0,
    source_max: float = 1.0,
    target_min: float = 0.0,
    target_max: float = 1.0,
) -> torch.Tensor:
    """Clamp to ``[source_min, source_max]``, then map linearly onto ``[target_min, target_max]``.

    ``x := clamp(x, source_min, source_max)``,
    ``x := target_min + (x - source_min) / (source_max - source_min) * (target_max - target_min)``.

    NeMo RL: ``scale_rewards`` (nemo_rl/algorithms/grpo.py:1831-1874), applied to ``total_reward`` and to
    every ``reward/<name>`` component when ``grpo.reward_scaling.enabled`` is true; config
    ``grpo.reward_scaling.{enabled, source_min, source_max, target_min, target_max}`` (defaults
    false, 0, 1, 0, 1; class at nemo_rl/algorithms/grpo.py:169-181).
    """
    rewards = _tensor("rewards", rewards)
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must be a floating tensor, got dtype {rewards.dtype}")
    smin = _check_number("source_min", source_min)
    smax = _check_number("source_max", source_max)
    tmin = _check_number("target_min", target_min)
    tmax = _check_number("target_max", target_max)
    if not smax > smin:
        raise ValueError(f"source_max ({smax!r}) must be > source_min ({smin!r})")
    x = rewards.to(_F64).clamp(min=smin, max=smax)
    return (tmin + (x - smin) / (smax - smin) * (tmax - tmin)).to(rewards.dtype)
