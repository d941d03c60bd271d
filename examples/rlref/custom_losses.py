r"""A custom loss written as a user extension: clipped policy gradient plus an entropy bonus.

NeMo RL has no entropy bonus: ``approx_entropy`` is only a logged diagnostic, and the GRPO guide
advises against back-propagating through it (nemo_rl/algorithms/loss/loss_functions.py:710-717;
docs/guides/grpo.md:677-686). This module is the recipe a user would write on the real extension
point, the ``LossFunction`` protocol (nemo_rl/algorithms/loss/interfaces.py:60-110): attributes
``loss_type`` and ``input_type``, a keyword call
``loss_fn(next_token_logprobs=..., data=..., global_valid_seqs=..., global_valid_toks=...)``
returning ``(loss, metrics)``.

The loss only sees the log-probabilities of the *sampled* tokens (``LossInputType.LOGPROB``), not
the full distribution, so the entropy gradient is estimated with the score function. For one
context with distribution :math:`\pi`,

.. math::

    \nabla_\theta H(\pi) = -\mathbb{E}_{y\sim\pi}\big[\log\pi(y)\,\nabla_\theta\log\pi(y)\big]

(the ``-1`` term vanishes because :math:`\mathbb{E}_\pi[\nabla\log\pi] = 0`). Minimising the
surrogate ``c * sg(log pi) * log pi`` per sampled token therefore follows ``-c * grad H`` in
expectation, on-policy. The full loss is

.. math::

    L = L_{\text{ClippedPG}} + c \cdot \frac{1}{N_{\text{tok}}}\sum_{b,t} m_{bt}\,
        \operatorname{sg}(\log\pi_{bt})\,\log\pi_{bt}

with :math:`N_{\text{tok}}` = ``global_valid_toks``, so the micro-batch losses add up to the
full-batch loss, and each term depends on its own sequence only (packing-safe).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from rlref.losses import (
    ClippedPGLoss,
    ClippedPGLossConfig,
    LossInputType,
    LossType,
    _check_curr,
    _count,
    _get,
)
from rlref.masking import masked_mean

__all__ = ["EntropyBonusPGLoss", "entropy_surrogate"]


def entropy_surrogate(curr: torch.Tensor, mask: torch.Tensor, global_valid_toks) -> torch.Tensor:
    r"""``sum(mask * sg(curr) * curr) / global_valid_toks``: its gradient is ``-grad H`` in expectation.

    ``curr`` are the sampled tokens' log-probabilities ``[B, T]`` and ``mask`` the matching
    ``[B, T]`` token mask. Only the gradient matters: the value is the masked mean of
    ``log(pi)**2`` (>= 0), not an entropy; the on-policy entropy estimate is ``-mean(log pi)``
    (``lab/sampled_entropy`` in :class:`EntropyBonusPGLoss`).
    """
    curr = _check_curr(curr, "curr")
    if not isinstance(mask, torch.Tensor) or mask.shape != curr.shape:
        raise ValueError(f"mask must be a tensor of shape {tuple(curr.shape)}")
    gt = _count("global_valid_toks", global_valid_toks, curr.dtype, curr.device)
    return masked_mean(curr.detach() * curr, mask.to(curr.dtype), global_normalization_factor=gt)


class EntropyBonusPGLoss:
    r"""``ClippedPGLoss`` plus ``entropy_coef`` times the score-function entropy surrogate.

    ``config`` / ``overrides`` configure the inner :class:`rlref.losses.ClippedPGLoss` (every
    ``loss_fn.*`` key); ``token_level_loss`` must stay True because the bonus is normalised by
    ``global_valid_toks`` (``LossType.TOKEN_LEVEL``). ``entropy_coef = 0`` gives back ClippedPGLoss
    exactly. Metrics: the inner loss's, with ``loss`` the total, plus ``lab/entropy_bonus`` (the
    bonus term added to the loss) and ``lab/sampled_entropy`` (``-mean(log pi)`` over valid tokens,
    the on-policy entropy estimate).
    """

    loss_type = LossType.TOKEN_LEVEL
    input_type = LossInputType.LOGPROB

    def __init__(self, entropy_coef: float = 0.01, config: ClippedPGLossConfig | Mapping | None = None,
                 **overrides) -> None:
        if isinstance(entropy_coef, bool) or not isinstance(entropy_coef, (int, float)) \
                or not entropy_coef >= 0:
            raise ValueError(f"entropy_coef must be a number >= 0, got {entropy_coef!r}")
        self.entropy_coef = float(entropy_coef)
        self.inner = ClippedPGLoss(config, **overrides)
        if not self.inner.config.token_level_loss:
            raise ValueError("EntropyBonusPGLoss needs token_level_loss=True (the bonus is a token mean)")
        self.config = self.inner.config

    def __repr__(self) -> str:
        return f"EntropyBonusPGLoss(entropy_coef={self.entropy_coef}, {self.config})"

    def replace(self, **changes) -> EntropyBonusPGLoss:
        """A copy with ``entropy_coef`` and/or inner config keys changed."""
        coef = changes.pop("entropy_coef", self.entropy_coef)
        return EntropyBonusPGLoss(coef, dataclasses.replace(self.config, **changes))

    def __call__(self, next_token_logprobs, data, global_valid_seqs, global_valid_toks):
        loss, metrics = self.inner(next_token_logprobs=next_token_logprobs, data=data,
                                   global_valid_seqs=global_valid_seqs, global_valid_toks=global_valid_toks)
        curr = _check_curr(next_token_logprobs).to(loss.dtype)
        B, T = curr.shape
        tm = _get(data, "token_mask", (B, T + 1), curr.dtype, mask=True)[:, 1:]
        sm = _get(data, "sample_mask", (B,), curr.dtype, mask=True)
        m = tm * sm[:, None]
        bonus = self.entropy_coef * entropy_surrogate(curr, m, global_valid_toks)
        total = loss + bonus
        metrics = dict(metrics)
        metrics["loss"] = float(total.detach())
        metrics["lab/entropy_bonus"] = float(bonus.detach())
        gt = _count("global_valid_toks", global_valid_toks, curr.dtype, curr.device)
        metrics["lab/sampled_entropy"] = float(-masked_mean(curr.detach(), m, global_normalization_factor=gt))
        return total, metrics
