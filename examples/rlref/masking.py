"""Masked means with global normalisation, the way NeMo RL reduces every loss.

NeMo RL splits a global batch into micro-batches (and data-parallel ranks) but divides each
micro-batch's masked sum by the count over the *whole* global batch. Summing the micro-batch
results then gives exactly the full-batch mean. Two reductions are built on this:

* token mean  ``TokMean(v) = sum(v * m) / (global_valid_toks + 1e-8)``
* sequence mean
  ``SeqMean(v) = sum_b sm_b * [sum_t v_bt tm_bt / (sum_t tm_bt + 1e-8)] / (global_valid_seqs + 1e-8)``

NeMo RL: ``masked_mean`` (nemo_rl/algorithms/utils.py:212-224); global counts are all-reduced in
nemo_rl/models/automodel/data.py:404-430.
"""

from __future__ import annotations

import torch

__all__ = ["EPS", "masked_mean", "sequence_mean", "token_mean"]

#: The literal constant NeMo RL adds to every denominator (why an all-masked micro-batch gives 0, not NaN).
EPS = 1e-8


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _as_count(name: str, value: object, like: torch.Tensor) -> torch.Tensor:
    """A global count (python number or 0-d/1-element tensor) as a 0-d tensor of ``like``'s dtype."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a 0-d tensor, got bool")
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold a single number, got shape {tuple(value.shape)}")
        return value.reshape(()).to(dtype=like.dtype, device=like.device)
    raise TypeError(f"{name} must be a number or a 0-d tensor, got {type(value).__name__}")


def masked_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    global_normalization_factor: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``sum(values * mask) / (factor + 1e-8)``, where ``factor`` defaults to ``sum(mask)``.

    Pass the global count (``global_valid_toks`` or ``global_valid_seqs``) as
    ``global_normalization_factor`` to get a micro-batch's share of the global mean; the shares of
    all micro-batches add up to the full-batch mean. ``mask`` must broadcast against ``values``.

    NeMo RL: ``masked_mean`` (nemo_rl/algorithms/utils.py:212-224).
    """
    values = _check_tensor("values", values)
    mask = _check_tensor("mask", mask)
    try:
        torch.broadcast_shapes(values.shape, mask.shape)
    except RuntimeError as err:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast against values of shape "
            f"{tuple(values.shape)}"
        ) from err
    if not values.is_floating_point():
        raise TypeError(f"values must be a floating tensor, got dtype {values.dtype}")
    total = (values * mask).sum()
    if global_normalization_factor is None:
        factor = mask.to(total.dtype).sum()
    else:
        factor = _as_count("global_normalization_factor", global_normalization_factor, total)
    return total / (factor + EPS)


def token_mean(values: torch.Tensor, mask: torch.Tensor, global_valid_toks) -> torch.Tensor:
    """TokMean: ``sum(values * mask) / (global_valid_toks + 1e-8)``.

    ``mask`` is the full loss mask ``token_mask * sample_mask[:, None]``. NeMo RL uses this for
    ``token_level_loss: true`` (nemo_rl/algorithms/loss/loss_functions.py:678-693).
    """
    return masked_mean(values, mask, global_normalization_factor=global_valid_toks)


def sequence_mean(
    values: torch.Tensor, token_mask: torch.Tensor, sample_mask: torch.Tensor, global_valid_seqs
) -> torch.Tensor:
    """SeqMean: mean over each row's valid tokens, then ``sum_b sm_b * row_mean_b / (GS + 1e-8)``.

    The inner mean uses ``token_mask`` only (``sum_t v*tm / (sum_t tm + 1e-8)``), so a row with no
    valid token contributes 0 but still counts in ``global_valid_seqs`` if its sample mask is 1.
    ``values`` and ``token_mask`` are ``[B, T]``; ``sample_mask`` is ``[B]``. ``values`` may also be
    ``[B, 1]`` (one value per row).

    NeMo RL: ``token_level_loss: false`` (nemo_rl/algorithms/loss/loss_functions.py:678-693).
    """
    values = _check_tensor("values", values)
    token_mask = _check_tensor("token_mask", token_mask)
    sample_mask = _check_tensor("sample_mask", sample_mask)
    if token_mask.dim() != 2:
        raise ValueError(f"token_mask must be [B, T], got shape {tuple(token_mask.shape)}")
    if sample_mask.shape != token_mask.shape[:1]:
        raise ValueError(
            f"sample_mask must be [B] = {tuple(token_mask.shape[:1])}, got shape {tuple(sample_mask.shape)}"
        )
    row_sum = (values * token_mask).sum(dim=-1)
    row_mean = row_sum / (token_mask.to(row_sum.dtype).sum(dim=-1) + EPS)
    return masked_mean(row_mean, sample_mask, global_normalization_factor=global_valid_seqs)
