"""Per-token KL estimators k1, k2, k3 (Schulman) with NeMo RL's clamps and importance weights.

With ``logr = logprobs_reference - logprobs`` (log pi_ref - log pi, evaluated at tokens sampled from pi):

* ``k1 = -logr``               (unbiased for KL(pi || pi_ref), high variance, can be negative)
* ``k2 = logr**2 / 2``         (biased, low variance, >= 0)
* ``k3 = exp(logr) - 1 - logr``  (unbiased, >= 0)

NeMo RL: ``calculate_kl`` (nemo_rl/algorithms/utils.py:42-101); the loss uses it through
``loss_fn.reference_policy_kl_type`` / ``kl_input_clamp_value`` / ``kl_output_clamp_value``.
"""

from __future__ import annotations

import torch

__all__ = ["KL_TYPES", "calculate_kl"]

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
