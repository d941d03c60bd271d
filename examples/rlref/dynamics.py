"""Training-dynamics helpers for the Performance Analysis notebook.

:class:`ClipFractionLoss`
    wraps a ClippedPG loss (the LossFunction protocol) and adds ``lab/clip_fraction``: the share of
    valid tokens whose ratio ``exp(curr - prev)`` lies outside ``[1 - ratio_clip_min, 1 + ratio_clip_max]``.
    NeMo RL logs ``probs_ratio`` / ``probs_ratio_clamped`` means and extremes, not this share
    (nemo_rl/algorithms/loss/loss_functions.py:767-787).
:func:`consumed`
    samples or tokens seen up to each step (the x axis of a sample-efficiency curve).
:func:`timing_breakdown`
    mean seconds per step of each ``timing/train/<label>`` and the unaccounted remainder.

Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["ClipFractionLoss", "consumed", "timing_breakdown"]


class ClipFractionLoss:
    """A ClippedPG loss that also reports ``lab/clip_fraction`` (loss and gradients unchanged).

    Per micro-batch the metric is ``Σ_t m_t · 1[r_t ∉ [1-ε_low, 1+ε_high]] / global_valid_toks``
    with ``r_t = exp(curr_t - prev_t)`` and ``m = token_mask[:, 1:] · sample_mask``, so the values of
    the micro-batches of one global batch add up to the global-batch fraction (the same global
    normalisation as the loss). ``inner`` must have a ``config`` with ``ratio_clip_min`` and
    ``ratio_clip_max`` (an :class:`rlref.losses.ClippedPGLoss`).
    """

    def __init__(self, inner) -> None:
        cfg = getattr(inner, "config", None)
        if cfg is None or not hasattr(cfg, "ratio_clip_min") or not hasattr(cfg, "ratio_clip_max"):
            raise TypeError("inner must be a ClippedPG loss with config.ratio_clip_min/ratio_clip_max")
        if not callable(inner):
            raise TypeError("inner must be callable (the LossFunction protocol)")
        self.inner = inner
        self.config = cfg
        self.loss_type = inner.loss_type
        self.input_type = inner.input_type

    def __repr__(self) -> str:
        return f"ClipFractionLoss({self.inner!r})"

    def __call__(self, next_token_logprobs: torch.Tensor, data: Mapping[str, torch.Tensor],
                 global_valid_seqs, global_valid_toks):
        loss, metrics = self.inner(next_token_logprobs=next_token_logprobs, data=data,
                                   global_valid_seqs=global_valid_seqs, global_valid_toks=global_valid_toks)
        with torch.no_grad():
            curr = next_token_logprobs.detach().double()
            prev = data["prev_logprobs"][:, 1:].to(curr)
            mask = data["token_mask"][:, 1:].to(curr) * data["sample_mask"].to(curr)[:, None]
            ratio = torch.exp(curr - prev)
            lo, hi = 1 - self.config.ratio_clip_min, 1 + self.config.ratio_clip_max
            outside = ((ratio < lo) | (ratio > hi)).to(curr)
            denom = float(global_valid_toks)
            metrics = dict(metrics)
            metrics["lab/clip_fraction"] = float((outside * mask).sum()) / denom if denom > 0 else math.nan
        return loss, metrics


def consumed(history, key: str = "train/global_valid_seqs") -> np.ndarray:
    """Cumulative amount seen *after* each step: ``C_t = Σ_{i<=t} x_i`` for the per-step count ``key``.

    ``history`` is a History (``key`` is read from it) or a 1-D sequence of per-step counts.
    ``train/total_num_tokens`` is the step's prompt + response tokens in NeMo RL and in the lab.
    For samples, pass ``num_prompts_per_step * num_generations_per_prompt`` per step (what NeMo RL's
    ``performance/samples_per_sec`` counts; nemo_rl/algorithms/utils.py:771). NeMo RL's
    ``train/global_valid_seqs`` is the mean over micro-batches of each global batch's count
    (nemo_rl/algorithms/grpo.py:3480-3489), i.e. samples per *optimizer* step, which is the step's
    count only when ``train_global_batch_size`` equals the batch; the lab averages the same way.
    Raises on a missing or negative count.
    """
    x = np.asarray(history.series(key) if hasattr(history, "series") else history, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{key} must give a non-empty 1-D series, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(f"{key} must be finite and non-negative at every step")
    return np.cumsum(x)


def timing_breakdown(histories: Sequence, labels: Sequence[str], skip_first: int = 1,
                     total: str = "total_step_time") -> dict[str, float]:
    """Mean seconds per step of ``timing/train/<label>`` over runs and steps, plus ``"other"``.

    The first ``skip_first`` steps of every run are dropped (warm-up). ``"other"`` is the mean of
    ``total - Σ labels`` per step: bookkeeping not inside any timed phase (never negative when the
    phases are disjoint parts of the step). ``"total"`` is the mean step time.
    """
    if not histories:
        raise ValueError("need at least one History")
    if not labels:
        raise ValueError("labels is empty")
    if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
        raise ValueError(f"skip_first must be an int >= 0, got {skip_first!r}")
    cols: dict[str, list[np.ndarray]] = {lab: [] for lab in [*labels, total]}
    for h in histories:
        if len(h) <= skip_first:
            raise ValueError(f"a run has {len(h)} steps; cannot skip the first {skip_first}")
        for lab in cols:
            cols[lab].append(h.series(f"timing/train/{lab}")[skip_first:])
    means = {lab: float(np.mean(np.concatenate(v))) for lab, v in cols.items()}
    out = {lab: means[lab] for lab in labels}
    out["other"] = means[total] - sum(out.values())
    out["total"] = means[total]
    return out
