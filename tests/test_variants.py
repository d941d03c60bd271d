"""Tests of rlref.variants (Dr. GRPO): hand-checked values, properties (hypothesis), known special
cases, the lab integration and every validation error.

Property inputs come from a seeded torch generator (hypothesis picks shapes, seeds and knobs) and are
computed in float64, so equalities hold to ~1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_batches import global_counts, loss_and_grad, random_pg_batch

from rlref import advantages as adv
from rlref.lab import VOCAB_SIZE, GRPOConfig, PolicyConfig, TinyCausalLM, grpo_train, make_task
from rlref.losses import ClippedPGLoss, LossInputType, LossType
from rlref.variants import DrGRPOLoss, DrGRPOLossConfig, dr_grpo_advantages, token_level_to_dr_grpo_factor

FAST = settings(max_examples=40, deadline=None)
F64 = torch.float64


loss_knobs = st.fixed_dictionaries({
    "ratio_clip_min": st.sampled_from([0.2, 0.1]),
    "ratio_clip_max": st.sampled_from([0.2, 0.28]),
    "reference_policy_kl_penalty": st.sampled_from([0.0, 0.05]),
    "reference_policy_kl_type": st.sampled_from(["k1", "k2", "k3"]),
})


# ------------------------------------------------------------------------------------------------
# Advantages
# ------------------------------------------------------------------------------------------------


def test_dr_grpo_advantage_hand_computed():
    # Two prompts, three responses each: A = r - mean of the whole group, no std.
    prompt_ids = torch.tensor([[1, 5], [1, 5], [1, 5], [1, 6], [1, 6], [1, 6]])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    a = dr_grpo_advantages(prompt_ids, rewards, torch.ones(6, 4))
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    assert a.shape == (6, 4)
    torch.testing.assert_close(a, expected[:, None].expand(6, 4), rtol=0, atol=1e-7)


@FAST
@given(seed=st.integers(0, 10_000), n_groups=st.integers(1, 5), group=st.integers(2, 8),
       binary=st.booleans())
def test_dr_grpo_advantage_is_grpo_without_std_and_without_leave_one_out(seed, n_groups, group, binary):
    g = torch.Generator().manual_seed(seed)
    B = n_groups * group
    prompt_ids = torch.arange(n_groups).repeat_interleave(group)[:, None]
    perm = torch.randperm(B, generator=g)  # groups need not be contiguous
    prompt_ids = prompt_ids[perm]
    rewards = (torch.rand(B, generator=g) > 0.5).to(F64) if binary else torch.randn(B, generator=g, dtype=F64)
    mask = torch.ones(B, 3, dtype=F64)
    a = dr_grpo_advantages(prompt_ids, rewards, mask)
    grpo = adv.grpo_advantages(prompt_ids, rewards, mask, normalize_rewards=False,
                               use_leave_one_out_baseline=False)
    torch.testing.assert_close(a, grpo, rtol=0, atol=1e-12)
    # Groups sum to zero, and the leave-one-out advantage is G / (G - 1) times larger.
    for k in range(n_groups):
        rows = prompt_ids[:, 0] == k
        assert abs(float(a[rows, 0].sum())) < 1e-10
    loo = adv.grpo_advantages(prompt_ids, rewards, mask, normalize_rewards=False,
                              use_leave_one_out_baseline=True)
    torch.testing.assert_close(a, loo * (group - 1) / group, rtol=0, atol=1e-12)


def test_dr_grpo_advantage_bad_input():
    with pytest.raises(ValueError, match="mask"):
        dr_grpo_advantages(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="mask"):
        dr_grpo_advantages(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2), torch.ones(2))
    with pytest.raises((ValueError, TypeError)):
        dr_grpo_advantages(torch.zeros(2, 1, dtype=torch.long), torch.zeros(3), torch.ones(2, 2))


# ------------------------------------------------------------------------------------------------
# Loss: values, micro-batches, special cases
# ------------------------------------------------------------------------------------------------


def test_protocol_attributes():
    loss_fn = DrGRPOLoss(max_response_length=4)
    assert loss_fn.loss_type is LossType.SEQUENCE_LEVEL
    assert loss_fn.input_type is LossInputType.LOGPROB
    assert "max_response_length=4" in repr(loss_fn)
    assert DrGRPOLoss({"max_response_length": 3}, ratio_clip_max=0.28).config.ratio_clip_max == 0.28


def test_hand_computed_on_policy_value_and_gradient():
    # On policy (curr == prev): the ratio is 1, so loss = -sum(m * A) / (N * L_max) and
    # d loss / d curr = -A / (N * L_max) on every valid token, whatever the response length.
    curr = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=F64))
    tm = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 1]], dtype=F64)  # lengths 1 and 3
    data = {
        "token_mask": tm,
        "sample_mask": torch.ones(2, dtype=F64),
        "advantages": torch.tensor([[0.0] + [1.0] * 3, [0.0] + [-1.0] * 3], dtype=F64),
        "prev_logprobs": torch.cat([torch.zeros(2, 1, dtype=F64), curr], 1),
        "generation_logprobs": torch.cat([torch.zeros(2, 1, dtype=F64), curr], 1),
    }
    loss, grad, metrics = loss_and_grad(DrGRPOLoss(max_response_length=4), curr, data, 2.0, 4.0)
    # sum(m * -A) = -(1) + (1 + 1 + 1) = 2; divided by N * L_max = 8.
    assert float(loss) == pytest.approx(2 / 8, rel=1e-7)
    expected = torch.tensor([[-1 / 8, 0, 0], [1 / 8, 1 / 8, 1 / 8]], dtype=F64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-9)
    assert metrics["probs_ratio"] == pytest.approx(1.0)
    assert metrics["num_valid_samples"] == 2.0
    # GRPO's per-sequence mean weights the short response's token 3x more than each long one's.
    _, g_seq, _ = loss_and_grad(ClippedPGLoss(token_level_loss=False, reference_policy_kl_penalty=0.0),
                                 curr, data, 2.0, 4.0)
    torch.testing.assert_close(g_seq, torch.tensor([[-1 / 2, 0, 0], [1 / 6, 1 / 6, 1 / 6]], dtype=F64),
                               rtol=1e-6, atol=1e-9)  # the 1e-8 in each row's mean denominator


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(2, 8), S=st.integers(3, 9), knobs=loss_knobs,
       cuts=st.lists(st.integers(1, 7), max_size=3))
def test_microbatch_losses_and_gradients_add_up_to_the_full_batch(seed, B, S, knobs, cuts):
    curr, data = random_pg_batch(seed, B, S)
    GS, GT = global_counts(data)
    loss_fn = DrGRPOLoss(max_response_length=S, **knobs)
    full_loss, full_grad, full_m = loss_and_grad(loss_fn, curr, data, GS, GT)
    edges = [0, *sorted({c for c in cuts if 0 < c < B}), B]
    total, grads, ratio = torch.zeros((), dtype=F64), [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = {k: v[lo:hi] for k, v in data.items()}
        loss, grad, m = loss_and_grad(loss_fn, curr[lo:hi], part, GS, GT)
        total, ratio = total + loss, ratio + m["probs_ratio"]
        grads.append(grad)
    torch.testing.assert_close(total, full_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat(grads), full_grad, rtol=1e-10, atol=1e-12)
    assert ratio == pytest.approx(full_m["probs_ratio"], rel=1e-10)


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), S=st.integers(2, 9), knobs=loss_knobs)
def test_full_length_responses_reduce_to_token_and_sequence_level_grpo(seed, B, S, knobs):
    # Every response uses the whole budget: N * L_max == global_valid_toks and |o_i| == L_max, so
    # Dr. GRPO, token-level and sequence-level ClippedPGLoss are one loss (values and gradients).
    curr, data = random_pg_batch(seed, B, S, full_length=True)
    GS, GT = global_counts(data)
    dr, g_dr, _ = loss_and_grad(DrGRPOLoss(max_response_length=S - 1, **knobs), curr, data, GS, GT)
    for token_level in (True, False):
        pg = ClippedPGLoss(token_level_loss=token_level, **knobs)
        ref, g_ref, _ = loss_and_grad(pg, curr, data, GS, GT)
        torch.testing.assert_close(dr, ref, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(g_dr, g_ref, rtol=1e-7, atol=1e-10)


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), S=st.integers(2, 9), extra=st.integers(0, 5),
       knobs=loss_knobs)
def test_dr_grpo_is_token_level_grpo_times_a_batch_factor(seed, B, S, extra, knobs):
    # Same per-token terms, different divisor: Dr. GRPO = GT / (N * L_max) x token-level GRPO.
    curr, data = random_pg_batch(seed, B, S)
    GS, GT = global_counts(data)
    L_max = S - 1 + extra
    dr, g_dr, m_dr = loss_and_grad(DrGRPOLoss(max_response_length=L_max, **knobs), curr, data, GS, GT)
    tok, g_tok, m_tok = loss_and_grad(ClippedPGLoss(token_level_loss=True, **knobs), curr, data, GS, GT)
    factor = token_level_to_dr_grpo_factor(GT, GS, L_max)
    assert 0 < factor <= 1
    torch.testing.assert_close(dr, tok * factor, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(g_dr, g_tok * factor, rtol=1e-7, atol=1e-10)
    for key in ("probs_ratio", "probs_ratio_clamped", "probs_ratio_min", "probs_ratio_max", "kl_penalty"):
        assert m_dr[key] == pytest.approx(m_tok[key], rel=1e-7, abs=1e-10), key


@FAST
@given(seed=st.integers(0, 10_000), B=st.integers(2, 6), S=st.integers(3, 8))
def test_on_policy_token_gradient_does_not_depend_on_response_length(seed, B, S):
    # Dr. GRPO's claim: at ratio 1, every valid token of row i gets gradient -A_i / (N * L_max).
    curr, data = random_pg_batch(seed, B, S, p_drop=0.0)
    data["prev_logprobs"] = torch.cat([torch.zeros(B, 1, dtype=F64), curr], 1)
    GS, GT = global_counts(data)
    _, grad, _ = loss_and_grad(DrGRPOLoss(max_response_length=S), curr, data, GS, GT)
    m = data["token_mask"][:, 1:]
    expected = -data["advantages"][:, 1:] * m / (float(GS) * S)
    torch.testing.assert_close(grad, expected, rtol=1e-7, atol=1e-12)


def test_clipping_stops_the_gradient_outside_the_trust_region():
    # A > 0 and ratio 1.5 > 1 + 0.2: the clipped branch is active, so no gradient flows.
    curr = torch.log(torch.tensor([[0.6]], dtype=F64))
    data = {
        "token_mask": torch.tensor([[0.0, 1.0]], dtype=F64),
        "sample_mask": torch.ones(1, dtype=F64),
        "advantages": torch.tensor([[0.0, 1.0]], dtype=F64),
        "prev_logprobs": torch.log(torch.tensor([[1.0, 0.4]], dtype=F64)),
    }
    loss, grad, metrics = loss_and_grad(DrGRPOLoss(max_response_length=2), curr, data, 1.0, 1.0)
    assert float(loss) == pytest.approx(-1.2 / 2)
    assert float(grad.abs().sum()) == 0.0
    assert metrics["probs_ratio"] == pytest.approx(1.5)
    assert metrics["probs_ratio_clamped"] == pytest.approx(1.2)


def test_no_valid_rows_gives_zero_loss_and_finite_metrics():
    curr, data = random_pg_batch(0, 3, 4)
    data["sample_mask"] = torch.zeros(3, dtype=F64)
    loss, grad, metrics = loss_and_grad(DrGRPOLoss(max_response_length=4), curr, data, 0.0, 0.0)
    assert float(loss) == 0.0 and float(grad.abs().sum()) == 0.0
    assert metrics["num_valid_samples"] == 0.0


def test_float32_inputs_are_computed_in_float32():
    curr, data = random_pg_batch(1, 3, 5)
    GS, GT = global_counts(data)
    curr32 = curr.float()
    data32 = {k: v.float() for k, v in data.items()}
    loss64, _, _ = loss_and_grad(DrGRPOLoss(max_response_length=5), curr, data, GS, GT)
    loss32, grad32, _ = loss_and_grad(DrGRPOLoss(max_response_length=5), curr32, data32, GS, GT)
    assert loss32.dtype == torch.float32 and grad32.dtype == torch.float32
    assert float(loss32) == pytest.approx(float(loss64), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Validation errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"max_response_length": 0}, "max_response_length"),
    ({"max_response_length": True}, "max_response_length"),
    ({"max_response_length": 2.0}, "max_response_length"),
    ({"max_response_length": 4, "ratio_clip_min": -0.1}, "ratio_clip_min"),
    ({"max_response_length": 4, "ratio_clip_max": float("nan")}, "ratio_clip_max"),
    ({"max_response_length": 4, "reference_policy_kl_penalty": -1.0}, "reference_policy_kl_penalty"),
    ({"max_response_length": 4, "reference_policy_kl_type": "k4"}, "reference_policy_kl_type"),
    ({"max_response_length": 4, "kl_input_clamp_value": 0.0}, "kl_input_clamp_value"),
    ({"max_response_length": 4, "kl_output_clamp_value": -2.0}, "kl_output_clamp_value"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DrGRPOLossConfig(**kwargs)


def test_unknown_key_and_missing_length():
    with pytest.raises(TypeError, match="unknown DrGRPOLossConfig key"):
        DrGRPOLoss(max_response_length=4, token_level_loss=True)
    with pytest.raises(TypeError):
        DrGRPOLoss()


def test_call_rejects_bad_data():
    curr, data = random_pg_batch(2, 3, 5)
    GS, GT = global_counts(data)
    loss_fn = DrGRPOLoss(max_response_length=5)
    with pytest.raises(ValueError, match="more than max_response_length=2"):
        DrGRPOLoss(max_response_length=2)(next_token_logprobs=curr, data=data, global_valid_seqs=GS,
                                          global_valid_toks=GT)
    with pytest.raises(ValueError, match="prev_logprobs"):
        loss_fn(next_token_logprobs=curr, data={k: v for k, v in data.items() if k != "prev_logprobs"},
                global_valid_seqs=GS, global_valid_toks=GT)
    with pytest.raises(ValueError, match="reference_policy_logprobs"):
        DrGRPOLoss(max_response_length=5, reference_policy_kl_penalty=0.1)(
            next_token_logprobs=curr,
            data={k: v for k, v in data.items() if k != "reference_policy_logprobs"},
            global_valid_seqs=GS, global_valid_toks=GT)
    with pytest.raises(TypeError, match="data must be a dict"):
        loss_fn(next_token_logprobs=curr, data=[1, 2], global_valid_seqs=GS, global_valid_toks=GT)
    with pytest.raises(ValueError, match="next_token_logprobs"):
        loss_fn(next_token_logprobs=curr[0], data=data, global_valid_seqs=GS, global_valid_toks=GT)
    with pytest.raises(ValueError, match="global_valid_seqs"):
        loss_fn(next_token_logprobs=curr, data=data, global_valid_seqs=-1.0, global_valid_toks=GT)
    bad = dict(data, token_mask=data["token_mask"] * 2)
    with pytest.raises(ValueError, match="only 0 and 1"):
        loss_fn(next_token_logprobs=curr, data=bad, global_valid_seqs=GS, global_valid_toks=GT)


def test_factor_rejects_bad_input():
    assert token_level_to_dr_grpo_factor(6, 3, 4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_response_length"):
        token_level_to_dr_grpo_factor(6, 3, 0)
    with pytest.raises(ValueError, match="global_valid_seqs > 0"):
        token_level_to_dr_grpo_factor(6, 0, 4)


# ------------------------------------------------------------------------------------------------
# In the lab's GRPO loop
# ------------------------------------------------------------------------------------------------


def test_runs_in_the_lab_grpo_loop_and_is_deterministic():
    task = make_task("greater", 1, extra_tokens=2)
    policy_cfg = PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=8)
    cfg = GRPOConfig(num_prompts_per_step=4, num_generations_per_prompt=4, max_num_steps=3,
                     normalize_rewards=False, use_leave_one_out_baseline=False,
                     train_global_batch_size=8,
                     loss_fn=DrGRPOLoss(max_response_length=task.max_new_tokens))
    runs = [grpo_train(TinyCausalLM(policy_cfg, seed=0), task, cfg) for _ in range(2)]
    assert len(runs[0]) == 3 and runs[0].stopped_reason == "max_num_steps"
    assert runs[0].deterministic() == runs[1].deterministic()
    assert "DrGRPOLoss" in runs[0].meta["loss_fn"]
    assert all(math.isfinite(s["train/loss"]) for s in runs[0])
    # 16 samples in two optimizer steps of 8 (train_global_batch_size); the loop averages the two.
    assert runs[0][0]["train/num_valid_samples"] == 8.0
    assert runs[0][0]["lab/optimizer_steps"] == 2.0


# ------------------------------------------------------------------------------------------------
# The statistics of docs/research/ablation-studies.md, checked against the page's formulas
# ------------------------------------------------------------------------------------------------


def test_paired_interval_and_test_match_the_ablation_page_formula():
    """{eq}`ablation-studies-effect` and {eq}`ablation-studies-paired`: mean of the per-seed
    differences, t quantile with n - 1 degrees of freedom, sd of the differences."""
    from scipy import stats as st

    from rlref import stats

    control = [0.41, 0.40, 0.48, 0.44, 0.47, 0.39]
    arm = [0.33, 0.44, 0.49, 0.40, 0.47, 0.30]
    d = [a - c for a, c in zip(arm, control, strict=True)]
    n, mean = len(d), sum(d) / len(d)
    se = math.sqrt(st.tvar(d) / n)
    half = st.t.ppf(0.975, n - 1) * se
    result = stats.compare(arm, control, paired=True)
    assert result.estimate == pytest.approx(mean, rel=1e-12)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half), rel=1e-10)
    assert result.pvalue == pytest.approx(2 * st.t.sf(abs(mean / se), n - 1), rel=1e-9)
    assert result.estimate == pytest.approx(sum(arm) / n - sum(control) / n, rel=1e-12)


def test_holm_matches_the_ablation_page_rule():
    from rlref import stats

    # Sorted: 0.001 <= 0.05/6, 0.009 <= 0.05/5, 0.011 <= 0.05/4, then 0.04 > 0.05/3 -> stop there:
    # reject the three smallest, although 0.04 alone would pass an uncorrected 5% test.
    p = [0.011, 0.2, 0.001, 0.009, 0.04, 0.9]
    assert stats.holm_bonferroni(p) == [True, False, True, True, False, False]
