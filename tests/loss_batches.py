"""Random policy-loss batches in NeMo RL's layout, shared by the loss tests (float64 throughout)."""

from __future__ import annotations

import torch

F64 = torch.float64


def random_pg_batch(seed: int, B: int, S: int, *, full_length: bool = False, p_drop: float = 0.2,
                    prev_noise: float = 0.4) -> tuple[torch.Tensor, dict]:
    """``(curr, data)``: right-padded responses of random length (or ``S - 1``) after a 1-token prompt.

    ``curr`` is ``(B, S-1)`` current log-probs; ``data`` holds token/sample masks (row 0 always valid),
    per-sequence advantages, ``prev_logprobs`` (``curr`` plus ``prev_noise`` Gaussian noise),
    ``generation_logprobs`` equal to ``curr`` and reference log-probs, each ``(B, S)``.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((B,), S - 1) if full_length else torch.randint(1, S, (B,), generator=g)
    token_mask = torch.zeros(B, S, dtype=F64)
    for b, n in enumerate(lengths.tolist()):
        token_mask[b, 1 : 1 + n] = 1.0
    sample_mask = (torch.rand(B, generator=g) > p_drop).to(F64)
    sample_mask[0] = 1.0  # at least one valid row
    curr = -torch.rand(B, S - 1, generator=g, dtype=F64) * 3
    noise = prev_noise * torch.randn(B, S - 1, generator=g, dtype=F64)
    data = {
        "token_mask": token_mask,
        "sample_mask": sample_mask,
        "advantages": (torch.randn(B, 1, generator=g, dtype=F64) * 2).expand(B, S).clone(),
        "prev_logprobs": torch.cat([torch.zeros(B, 1, dtype=F64), curr + noise], 1),
        "generation_logprobs": torch.cat([torch.zeros(B, 1, dtype=F64), curr], 1),
        "reference_policy_logprobs": -torch.rand(B, S, generator=g, dtype=F64) * 3,
    }
    return curr, data


def global_counts(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(global_valid_seqs, global_valid_toks)`` of the whole batch."""
    tm, sm = data["token_mask"][:, 1:], data["sample_mask"]
    return sm.sum(), (tm * sm[:, None]).sum()


def loss_and_grad(loss_fn, curr, data, GS, GT):
    """``(loss, d loss / d curr, metrics)`` of one LossFunction call."""
    x = curr.clone().requires_grad_(True)
    loss, metrics = loss_fn(next_token_logprobs=x, data=data, global_valid_seqs=GS, global_valid_toks=GT)
    loss.backward()
    return loss.detach(), x.grad, metrics
