r"""Formulas behind the Training Stability page: gradient clipping, Adam after a spike, log-prob mismatch.

- :func:`clip_coefficient`: the factor ``min(1, max_grad_norm / (||g|| + 1e-6))`` that total-norm
  clipping multiplies every gradient by (``torch.nn.utils.clip_grad_norm_``; NeMo RL key
  ``policy.max_grad_norm``, or ``megatron_cfg.optimizer.clip_grad`` on Megatron).
- :func:`adam_updates`: Adam's per-step update ``lr * m_hat / (sqrt(v_hat) + eps)`` for a sequence of
  scalar gradients, to show how one huge gradient inflates ``v`` and shrinks later updates.
- :func:`token_mult_prob_error`: the masked mean of ``exp(|gen - prev|)``, NeMo RL's
  ``token_mult_prob_error`` (docs/guides/grpo.md:630-637).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rlref.masking import masked_mean

__all__ = ["clip_coefficient", "adam_updates", "token_mult_prob_error"]


def clip_coefficient(total_norm: float, max_grad_norm: float | None) -> float:
    """``min(1, max_grad_norm / (total_norm + 1e-6))``; 1 when ``max_grad_norm`` is None (no clipping)."""
    if isinstance(total_norm, bool) or not isinstance(total_norm, (int, float)) or not total_norm >= 0:
        raise ValueError(f"total_norm must be a number >= 0, got {total_norm!r}")
    if max_grad_norm is None:
        return 1.0
    if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)) \
            or not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
    return min(1.0, max_grad_norm / (total_norm + 1e-6))


def adam_updates(grads: Sequence[float], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> list[float]:
    r"""Adam's update for each scalar gradient ``g_k`` (bias-corrected, no weight decay).

    ``m_k = b1 m + (1-b1) g_k``, ``v_k = b2 v + (1-b2) g_k^2``,
    ``u_k = lr * (m_k / (1-b1^k)) / (sqrt(v_k / (1-b2^k)) + eps)``; the parameter moves by ``-u_k``.
    """
    if not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    if not lr > 0 or not eps > 0:
        raise ValueError(f"lr and eps must be > 0, got lr={lr!r}, eps={eps!r}")
    b1, b2 = betas
    m = v = 0.0
    out = []
    for k, g in enumerate(grads, start=1):
        g = float(g)
        if not math.isfinite(g):
            raise ValueError(f"gradient {k - 1} is not finite: {g!r}")
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(lr * (m / (1 - b1**k)) / (math.sqrt(v / (1 - b2**k)) + eps))
    return out


def token_mult_prob_error(generation_logprobs: torch.Tensor, prev_logprobs: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask * exp(|gen - prev|)) / sum(mask)``: 1 when the generator and trainer agree exactly."""
    for name, t in (("generation_logprobs", generation_logprobs), ("prev_logprobs", prev_logprobs),
                    ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if generation_logprobs.shape != prev_logprobs.shape or mask.shape != prev_logprobs.shape:
        shapes = [tuple(t.shape) for t in (generation_logprobs, prev_logprobs, mask)]
        raise ValueError(f"generation_logprobs, prev_logprobs and mask must share one shape, got {shapes}")
    return masked_mean(torch.exp((generation_logprobs - prev_logprobs).abs()), mask.to(prev_logprobs.dtype))
