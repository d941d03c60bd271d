"""Property tests (hypothesis): invariants of the reference losses over random shapes and masks.

Inputs are drawn from a seeded torch generator (hypothesis picks the shapes, seeds and knobs) and
computed in float64, so equalities hold to ~1e-12.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rlref.kl import calculate_kl
from rlref.losses import ClippedPGLoss, DPOLoss, NLLLoss

FAST = settings(max_examples=50, deadline=None)
F64 = torch.float64


def _batch(seed: int, B: int, S: int, p_mask: float, p_drop: float):
    g = torch.Generator().manual_seed(seed)

    def lp(*shape):
        return -torch.rand(*shape, generator=g, dtype=F64) * 4

    curr = lp(B, S - 1)
    data = {
        "token_mask": (torch.rand(B, S, generator=g) > p_mask).to(F64),
        "sample_mask": (torch.rand(B, generator=g) > p_drop).to(F64),
        "advantages": torch.randn(B, S, generator=g, dtype=F64) * 2,
        "prev_logprobs": torch.cat([lp(B, 1), curr + 0.5 * torch.randn(B, S - 1, generator=g, dtype=F64)], 1),
        "generation_logprobs": torch.cat(
            [lp(B, 1), curr + 0.5 * torch.randn(B, S - 1, generator=g, dtype=F64)], 1
        ),
        "reference_policy_logprobs": lp(B, S),
    }
    return curr, data


def _counts(data):
    tm, sm = data["token_mask"][:, 1:], data["sample_mask"]
    return sm.sum(), (tm * sm[:, None]).sum()


def _split_points(draw_cuts: list[int], n: int, step: int = 1) -> list[tuple[int, int]]:
    cuts = sorted({c * step for c in draw_cuts if 0 < c * step < n})
    edges = [0, *cuts, n]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _microbatch_sum(loss_fn, curr, data, spans, GS, GT):
    total = torch.zeros((), dtype=F64)
    for lo, hi in spans:
        part = {k: v[lo:hi] for k, v in data.items()}
        loss, _ = loss_fn(
            next_token_logprobs=curr[lo:hi], data=part, global_valid_seqs=GS, global_valid_toks=GT
        )
        total = total + loss
    return total


pg_configs = st.fixed_dictionaries(
    {
        "token_level_loss": st.booleans(),
        "reference_policy_kl_penalty": st.sampled_from([0.0, 0.01, 0.3]),
        "reference_policy_kl_type": st.sampled_from(["k1", "k2", "k3"]),
        "ratio_clip_c": st.sampled_from([None, 3.0]),
        "ratio_clip_max": st.sampled_from([0.2, 0.28]),
        "disable_ppo_ratio": st.booleans(),
        "use_importance_sampling_correction": st.booleans(),
        "use_on_policy_kl_approximation": st.booleans(),
    }
)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 6),
    S=st.integers(2, 7),
    p_mask=st.sampled_from([0.0, 0.3, 0.7]),
    p_drop=st.sampled_from([0.0, 0.3]),
    cuts=st.lists(st.integers(0, 6), max_size=3),
    cfg=pg_configs,
    gspo=st.booleans(),
)
def test_clipped_pg_microbatch_losses_sum_to_the_full_batch_loss(seed, B, S, p_mask, p_drop, cuts, cfg, gspo):
    if gspo:
        cfg = {**cfg, "token_level_loss": False, "sequence_level_importance_ratios": True}
    curr, data = _batch(seed, B, S, p_mask, p_drop)
    GS, GT = _counts(data)
    fn = ClippedPGLoss(**cfg)
    curr_full = curr.clone().requires_grad_(True)
    full, _ = fn(next_token_logprobs=curr_full, data=data, global_valid_seqs=GS, global_valid_toks=GT)
    full.backward()
    curr_parts = curr.clone().requires_grad_(True)
    parts = _microbatch_sum(fn, curr_parts, data, _split_points(cuts, B), GS, GT)
    parts.backward()
    torch.testing.assert_close(parts, full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(curr_parts.grad, curr_full.grad, rtol=1e-10, atol=1e-12)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 6),
    S=st.integers(2, 7),
    p_mask=st.sampled_from([0.0, 0.5]),
    cuts=st.lists(st.integers(0, 6), max_size=3),
)
def test_nll_microbatch_losses_sum_to_the_full_batch_loss(seed, B, S, p_mask, cuts):
    curr, data = _batch(seed, B, S, p_mask, 0.2)
    GS, GT = _counts(data)
    fn = NLLLoss()
    full, _ = fn(next_token_logprobs=curr, data=data, global_valid_seqs=GS, global_valid_toks=GT)
    parts = _microbatch_sum(fn, curr, data, _split_points(cuts, B), GS, GT)
    torch.testing.assert_close(parts, full, rtol=1e-10, atol=1e-12)


def _dpo_batch(seed: int, P: int, S: int, p_mask: float, p_drop: float):
    g = torch.Generator().manual_seed(seed)
    curr = -torch.rand(2 * P, S - 1, generator=g, dtype=F64) * 4
    pair_keep = (torch.rand(P, generator=g) > p_drop).to(F64)
    data = {
        "reference_policy_logprobs": -torch.rand(2 * P, S, generator=g, dtype=F64) * 4,
        "token_mask": (torch.rand(2 * P, S, generator=g) > p_mask).to(F64),
        "sample_mask": pair_keep.repeat_interleave(2),  # a pair is kept or dropped as a whole
    }
    return curr, data


dpo_configs = st.fixed_dictionaries(
    {
        "reference_policy_kl_penalty": st.sampled_from([0.05, 0.5]),
        "sft_loss_weight": st.sampled_from([0.0, 0.3]),
        "preference_average_log_probs": st.booleans(),
        "sft_average_log_probs": st.booleans(),
    }
)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    P=st.integers(1, 4),
    S=st.integers(2, 6),
    p_mask=st.sampled_from([0.0, 0.4]),
    p_drop=st.sampled_from([0.0, 0.3]),
    cuts=st.lists(st.integers(0, 4), max_size=2),
    cfg=dpo_configs,
)
def test_dpo_microbatch_losses_sum_to_the_full_batch_loss(seed, P, S, p_mask, p_drop, cuts, cfg):
    curr, data = _dpo_batch(seed, P, S, p_mask, p_drop)
    GS, GT = _counts(data)
    fn = DPOLoss(**cfg)
    full, _ = fn(next_token_logprobs=curr, data=data, global_valid_seqs=GS, global_valid_toks=GT)
    parts = _microbatch_sum(fn, curr, data, _split_points(cuts, 2 * P, step=2), GS, GT)
    torch.testing.assert_close(parts, full, rtol=1e-10, atol=1e-12)


def _one_token_loss(log_ratio: float, adv: float, **cfg) -> float:
    """The per-token loss of a single valid token (GT = 1, no KL)."""
    curr = torch.tensor([[log_ratio]], dtype=F64)
    data = {
        "token_mask": torch.tensor([[0.0, 1.0]], dtype=F64),
        "sample_mask": torch.tensor([1.0], dtype=F64),
        "advantages": torch.tensor([[0.0, adv]], dtype=F64),
        "prev_logprobs": torch.zeros(1, 2, dtype=F64),
        "generation_logprobs": torch.zeros(1, 2, dtype=F64),
    }
    fn = ClippedPGLoss(reference_policy_kl_penalty=0.0, **cfg)
    loss, _ = fn(next_token_logprobs=curr, data=data, global_valid_seqs=1.0, global_valid_toks=1.0)
    return loss.item() * (1 + 1e-8)  # undo the literal +1e-8 in the denominator


log_ratios = st.floats(-3.0, 3.0, allow_nan=False)
advantages = st.floats(-5.0, 5.0, allow_nan=False)
clips = st.floats(0.0, 0.9, allow_nan=False)


@FAST
@given(log_ratio=log_ratios, adv=advantages, clip_min=clips, clip_max=clips)
def test_clipped_objective_never_exceeds_the_unclipped_objective(log_ratio, adv, clip_min, clip_max):
    objective = -_one_token_loss(log_ratio, adv, ratio_clip_min=clip_min, ratio_clip_max=clip_max)
    r = math.exp(log_ratio)
    assert objective <= r * adv + 1e-9 * (1 + abs(r * adv))
    # ... and it is exactly one of the two candidate terms.
    rc = min(max(r, 1 - clip_min), 1 + clip_max)
    assert objective == pytest.approx(min(r * adv, rc * adv), rel=1e-9, abs=1e-12)


@FAST
@given(log_ratio=log_ratios, adv=advantages, c=st.floats(1.01, 10.0))
def test_dual_clip_bounds_the_loss_by_c_abs_advantage_for_negative_advantages(log_ratio, adv, c):
    dual = _one_token_loss(log_ratio, adv, ratio_clip_c=c)
    plain = _one_token_loss(log_ratio, adv)
    if adv < 0:
        assert dual <= c * abs(adv) * (1 + 1e-9) + 1e-12
        assert dual == pytest.approx(min(plain, c * abs(adv)), rel=1e-9, abs=1e-12)
    else:
        assert dual == plain  # tokens with A >= 0 are untouched


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 10.0, 40.0]),
    in_clamp=st.sampled_from([None, 20.0, 1.0]),
    out_clamp=st.sampled_from([None, 10.0, 0.5]),
    weighted=st.booleans(),
)
def test_k3_is_never_negative(seed, scale, in_clamp, out_clamp, weighted):
    g = torch.Generator().manual_seed(seed)
    logprobs = torch.randn(64, generator=g, dtype=F64) * scale
    ref = torch.randn(64, generator=g, dtype=F64) * scale
    w = torch.rand(64, generator=g, dtype=F64) * 3 if weighted else None
    kl = calculate_kl(logprobs, ref, "k3", in_clamp, out_clamp, importance_sampling_weights=w)
    assert bool((kl >= 0).all())


def _swap_pairs(t: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(t.shape[0]).view(-1, 2).flip(1).reshape(-1)
    return t[idx]


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    P=st.integers(1, 5),
    S=st.integers(2, 6),
    beta=st.sampled_from([0.05, 0.2, 1.0]),
    avg=st.booleans(),
)
def test_dpo_is_antisymmetric_in_chosen_and_rejected(seed, P, S, beta, avg):
    curr, data = _dpo_batch(seed, P, S, 0.3, 0.0)
    GS, GT = _counts(data)
    fn = DPOLoss(reference_policy_kl_penalty=beta, preference_average_log_probs=avg)
    loss, m = fn(next_token_logprobs=curr, data=data, global_valid_seqs=GS, global_valid_toks=GT)
    swapped = {k: _swap_pairs(v) for k, v in data.items()}
    loss_s, m_s = fn(
        next_token_logprobs=_swap_pairs(curr), data=swapped, global_valid_seqs=GS, global_valid_toks=GT
    )
    # Delta_i flips sign: the chosen / rejected reward means trade places.
    assert m_s["rewards_chosen_mean"] == pytest.approx(m["rewards_rejected_mean"], rel=1e-9, abs=1e-12)
    assert m_s["rewards_rejected_mean"] == pytest.approx(m["rewards_chosen_mean"], rel=1e-9, abs=1e-12)
    # -log s(-x) = -log s(x) + x, so L(-Delta) - L(Delta) = beta * mean_i(Delta_i).
    mean_delta = m["rewards_chosen_mean"] - m["rewards_rejected_mean"]
    assert loss_s.item() - loss.item() == pytest.approx(beta * mean_delta, rel=1e-8, abs=1e-10)
    # Accuracies complement each other where no pair is tied.
    tm = data["token_mask"][:, 1:]
    rho = ((curr - data["reference_policy_logprobs"][:, :-1]) * tm).sum(-1)
    assume(bool(((rho[0::2] - rho[1::2]).abs() > 1e-9).all()))
    assert m["accuracy"] + m_s["accuracy"] == pytest.approx(1.0, rel=1e-7)


def test_positive_example_nll_is_normalised_per_microbatch_not_globally():
    """NeMo RL quirk (SCHEMA 8.9): this one term does not add up across micro-batches."""
    curr, data = _batch(seed=3, B=4, S=5, p_mask=0.0, p_drop=0.0)
    data["rewards"] = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=F64)
    GS, GT = _counts(data)
    fn = ClippedPGLoss(positive_example_nll_weight=1.0, reference_policy_kl_penalty=0.0)
    full, _ = fn(next_token_logprobs=curr, data=data, global_valid_seqs=GS, global_valid_toks=GT)
    parts = _microbatch_sum(fn, curr, data, [(0, 2), (2, 4)], GS, GT)
    actor, _ = ClippedPGLoss(reference_policy_kl_penalty=0.0)(
        next_token_logprobs=curr, data=data, global_valid_seqs=GS, global_valid_toks=GT
    )
    # Each micro-batch adds its own full NLL mean, so the sum counts the NLL term about twice.
    assert abs((parts - actor).item()) > 1.5 * abs((full - actor).item())
