"""Published GRPO variants written as user extensions: Dr. GRPO (Liu et al., 2025).

Dr. GRPO ("GRPO Done Right", *Understanding R1-Zero-Like Training: A Critical Perspective*) changes
two things in GRPO and nothing else:

1. **Advantage without the std.** ``A_i = r_i - mean_j r_j`` over the ``G`` responses of the same
   prompt (the plain group mean, the response itself included), with no division by the group std.
2. **No per-response length normalisation.** GRPO's objective averages each response's tokens
   (``1/|o_i|``); Dr. GRPO sums them and divides by a constant, the generation budget ``L_max``
   (``generate_max_length`` in the authors' code), so every token gets the same weight whatever the
   length of the response it sits in::

       loss = 1 / (N * L_max) * sum_i sum_t m_it * max(-A_i * r_it, -A_i * clip(r_it, 1-e_lo, 1+e_hi))

   with ``N`` the number of valid responses in the *global* batch (``global_valid_seqs``) and
   ``r_it = exp(log pi - log pi_old)``. An optional KL penalty to the reference policy uses the
   same normaliser.

This module is the recipe a NeMo RL user would write: an advantage function and a loss object that
follows the ``LossFunction`` protocol (attributes ``loss_type`` and ``input_type``, a keyword call
``loss_fn(next_token_logprobs=..., data=..., global_valid_seqs=..., global_valid_toks=...)`` returning
``(loss, metrics)``; nemo_rl/algorithms/loss/interfaces.py:60-110). NeMo RL has no Dr. GRPO class;
its closest built-in settings are ``grpo.normalize_rewards: false``,
``grpo.use_leave_one_out_baseline: false`` and ``loss_fn.token_level_loss: true``, which give the
same advantage and a loss that differs from Dr. GRPO's by the per-batch factor
``global_valid_toks / (N * L_max)`` (see :func:`token_level_to_dr_grpo_factor`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch

from rlref import advantages as adv
from rlref.kl import KL_TYPES, calculate_kl
from rlref.losses import LossInputType, LossType, _build_config, _count, _get, _loss_inputs
from rlref.masking import masked_mean

__all__ = [
    "DrGRPOLossConfig",
    "DrGRPOLoss",
    "dr_grpo_advantages",
    "token_level_to_dr_grpo_factor",
]


def dr_grpo_advantages(prompt_ids: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage ``[B, S]``: ``A_b = r_b - mean(rewards of b's prompt group)``, on every token.

    The mean includes the row itself (not leave-one-out) and nothing is divided by a std. Rows are
    grouped by identical prompt token ids (as NeMo RL groups them); a group of one gets ``A = 0``.
    ``mask`` ``[B, S]`` only gives the shape; the loss applies it.

    Equals :func:`rlref.advantages.grpo_advantages` with ``normalize_rewards=False,
    use_leave_one_out_baseline=False`` (NeMo RL's ``grpo`` estimator with both switches off), and
    ``(G - 1) / G`` times the leave-one-out advantage without normalisation for a group of ``G``.
    """
    baseline, _ = adv.baseline_and_std_per_prompt(prompt_ids, rewards, leave_one_out_baseline=False)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a [B, S] tensor with B = {rewards.shape[0]}, got {shape}")
    a = rewards.to(torch.float64) - baseline.to(torch.float64)
    return a[:, None].expand(mask.shape).to(rewards.dtype).clone()


@dataclasses.dataclass(frozen=True)
class DrGRPOLossConfig:
    """Keys of :class:`DrGRPOLoss`. The clip and KL keys mean what NeMo RL's ``loss_fn`` keys of the
    same names mean (nemo_rl/algorithms/loss/loss_functions.py:111-164); ``max_response_length`` is
    this variant's own key: the constant ``L_max`` (the generation budget, in tokens).

    The paper trains without a KL term, hence ``reference_policy_kl_penalty=0.0`` by default here
    (NeMo RL's ``ClippedPGLossConfig`` defaults to 0.01).
    """

    max_response_length: int
    ratio_clip_min: float = 0.2
    ratio_clip_max: float = 0.2
    reference_policy_kl_penalty: float = 0.0
    reference_policy_kl_type: str = "k3"
    kl_input_clamp_value: float | None = 20.0
    kl_output_clamp_value: float | None = 10.0

    def __post_init__(self) -> None:
        n = self.max_response_length
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_response_length must be a positive int (tokens), got {n!r}")
        for name in ("ratio_clip_min", "ratio_clip_max", "reference_policy_kl_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.reference_policy_kl_type not in KL_TYPES:
            raise ValueError(
                f"reference_policy_kl_type must be one of {KL_TYPES}, got {self.reference_policy_kl_type!r}"
            )
        for name in ("kl_input_clamp_value", "kl_output_clamp_value"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0):
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")


class DrGRPOLoss:
    r"""Dr. GRPO's clipped surrogate with the constant normaliser ``N * L_max`` (LossFunction protocol).

    Per token (``A`` advantage, ``r = exp(curr - prev)``, ``rc = clamp(r, 1 - ratio_clip_min,
    1 + ratio_clip_max)``, ``m = token_mask * sample_mask``)::

        loss = [sum(m * max(-A r, -A rc)) + beta * sum(m * KL_k(pi || pi_ref))] / (global_valid_seqs * L_max)

    Because ``global_valid_seqs`` counts the whole global batch, the losses of micro-batches add up
    to the loss of the full batch. ``loss_type`` is ``SEQUENCE_LEVEL`` (the normaliser counts
    sequences), ``input_type`` is ``LOGPROB``.

    ``data`` (NeMo RL layout, ``[B, S]`` with column 0 ignored): ``advantages``, ``prev_logprobs``,
    ``token_mask``, ``sample_mask`` ``[B]``; ``reference_policy_logprobs`` when ``beta > 0``.
    A row with more than ``L_max`` response tokens raises ``ValueError``: the constant would no longer
    bound the sum.

    Metrics (summed over micro-batches they add up to the global value): ``loss``; the token means
    ``probs_ratio``, ``probs_ratio_clamped`` and ``kl_penalty`` (mean per-token KL, whatever the loss
    normaliser); ``probs_ratio_min`` / ``probs_ratio_max``; ``num_valid_samples``.
    """

    loss_type = LossType.SEQUENCE_LEVEL
    input_type = LossInputType.LOGPROB

    def __init__(self, config: DrGRPOLossConfig | Mapping | None = None, **overrides) -> None:
        self.config = _build_config(DrGRPOLossConfig, config, overrides)

    def __repr__(self) -> str:
        return f"DrGRPOLoss({self.config})"

    def __call__(self, next_token_logprobs, data, global_valid_seqs, global_valid_toks):
        cfg = self.config
        curr, data, dtype = _loss_inputs(next_token_logprobs, data)
        B, T = curr.shape
        full = (B, T + 1)
        tm = _get(data, "token_mask", full, dtype, mask=True)[:, 1:]
        sm = _get(data, "sample_mask", (B,), dtype, mask=True)
        A = _get(data, "advantages", full, dtype)[:, 1:]
        prev = _get(data, "prev_logprobs", full, dtype)[:, 1:]
        GS = _count("global_valid_seqs", global_valid_seqs, dtype, curr.device)
        GT = _count("global_valid_toks", global_valid_toks, dtype, curr.device)
        m = tm * sm[:, None]
        lengths = tm.sum(-1)
        if bool((lengths > cfg.max_response_length).any()):
            raise ValueError(
                f"a response has {int(lengths.max())} tokens, more than max_response_length="
                f"{cfg.max_response_length}: set max_response_length to the generation budget"
            )
        norm = GS * cfg.max_response_length

        r = torch.exp(curr - prev)
        rc = r.clamp(1 - cfg.ratio_clip_min, 1 + cfg.ratio_clip_max)
        per_token = torch.maximum(-A * r, -A * rc)
        actor = masked_mean(per_token, m, global_normalization_factor=norm)

        beta = float(cfg.reference_policy_kl_penalty)
        if beta > 0:
            ref = _get(data, "reference_policy_logprobs", full, dtype)[:, 1:]
            # Unit weights that carry the score-function gradient, as ClippedPGLoss (and NeMo RL) does.
            kl_tok = calculate_kl(curr, ref, kl_type=cfg.reference_policy_kl_type,
                                  input_clamp_value=cfg.kl_input_clamp_value,
                                  output_clamp_value=cfg.kl_output_clamp_value,
                                  importance_sampling_weights=torch.exp(curr - curr.detach()))
            kl_term = beta * masked_mean(kl_tok, m, global_normalization_factor=norm)
            kl_mean = float(masked_mean(kl_tok.detach(), m, global_normalization_factor=GT))
        else:
            kl_term = torch.zeros((), dtype=dtype, device=curr.device)
            kl_mean = 0.0
        loss = actor + kl_term

        with torch.no_grad():
            valid = m != 0
            has_valid = bool(valid.any())
            metrics = {
                "loss": float(loss.detach()),
                "probs_ratio": float(masked_mean(r.detach(), m, global_normalization_factor=GT)),
                "probs_ratio_clamped": float(masked_mean(rc.detach(), m, global_normalization_factor=GT)),
                "probs_ratio_min": float(r[valid].min()) if has_valid else math.inf,
                "probs_ratio_max": float(r[valid].max()) if has_valid else -math.inf,
                "kl_penalty": kl_mean,
                "num_valid_samples": float(sm.sum()),
            }
        return loss, metrics


def token_level_to_dr_grpo_factor(global_valid_toks, global_valid_seqs, max_response_length: int) -> float:
    """``global_valid_toks / (global_valid_seqs * L_max)``: Dr. GRPO's loss over the token-level loss.

    With the same advantages and clip settings, ``DrGRPOLoss = factor * ClippedPGLoss(token_level_loss=
    True)`` on a batch, because the two sum the same per-token terms and differ only in the divisor
    (``global_valid_toks`` vs ``N * L_max``). The factor is the mean response length over ``L_max``:
    1 when every response uses the whole budget, and it changes from batch to batch as lengths do.
    """
    if isinstance(max_response_length, bool) or not isinstance(max_response_length, int) \
            or max_response_length < 1:
        raise ValueError(f"max_response_length must be a positive int, got {max_response_length!r}")
    toks, seqs = float(global_valid_toks), float(global_valid_seqs)
    if not (math.isfinite(toks) and math.isfinite(seqs)) or toks < 0 or seqs <= 0:
        raise ValueError(f"need global_valid_toks >= 0 and global_valid_seqs > 0, got {toks}, {seqs}")
    return toks / (seqs * max_response_length)
