"""rlref.advantages: hand-computed examples, NeMo RL's quirks, and every validation error.

Parity with NeMo RL's own outputs is checked by tests/test_golden_parity.py (cases adv_*.json);
the values here are worked out by hand from the formulas in each docstring.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from golden_advantage_adapters import ADVANTAGE_ADAPTERS

from rlref.advantages import (
    baseline_and_std_per_prompt,
    clip_advantages,
    gae_advantages,
    gdpo_advantages,
    group_ids,
    grpo_advantages,
    opd_advantages,
    opd_loss_fn_recommendations,
    opd_metrics,
    pad_teacher_logprobs,
    raw_reward_advantages,
    reinforce_plus_plus_advantages,
    scale_rewards,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
SQRT_HALF = math.sqrt(0.5)


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def ids(*groups):
    """prompt_ids [B, 2] with one distinct prompt per group label."""
    return torch.tensor([[g, 100 + g] for g in groups], dtype=torch.int64)


def close(got, expected, atol=1e-6):
    torch.testing.assert_close(
        got.to(torch.float64), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


# --------------------------------------------------------------------------------------------------
# Groups, baseline and std
# --------------------------------------------------------------------------------------------------


def test_group_ids_identical_rows_share_a_group_wherever_they_are():
    prompt_ids = torch.tensor([[5, 6], [1, 2], [5, 6], [1, 3], [1, 2]])
    g = group_ids(prompt_ids)
    assert g[0] == g[2] and g[1] == g[4]
    assert len({int(g[0]), int(g[1]), int(g[3])}) == 3


def test_leave_one_out_group_1_0_0_quirk():
    # The 1 row sees others [0, 0]: baseline 0, std 0. Each 0 row sees [1, 0]: baseline 0.5,
    # Bessel std sqrt(0.5).
    baseline, std = baseline_and_std_per_prompt(ids(0, 0, 0), t([1.0, 0.0, 0.0]))
    close(baseline, [0.0, 0.5, 0.5])
    close(std, [0.0, SQRT_HALF, SQRT_HALF])
    adv = grpo_advantages(ids(0, 0, 0), t([1.0, 0.0, 0.0]), torch.ones(3, 4))
    # The 1 row is left unnormalised (std 0); the 0 rows are divided by std + 1e-6.
    close(adv[:, 0], [1.0, -0.5 / (SQRT_HALF + 1e-6), -0.5 / (SQRT_HALF + 1e-6)])


def test_mean_baseline_group_1_0_0():
    baseline, std = baseline_and_std_per_prompt(
        ids(0, 0, 0), t([1.0, 0.0, 0.0]), leave_one_out_baseline=False
    )
    # mean 1/3; Bessel variance ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3.
    close(baseline, [1 / 3] * 3)
    close(std, [math.sqrt(1 / 3)] * 3)
    adv = grpo_advantages(
        ids(0, 0, 0), t([1.0, 0.0, 0.0]), torch.ones(3, 2), use_leave_one_out_baseline=False
    )
    s = math.sqrt(1 / 3) + 1e-6
    close(adv[:, 1], [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s])


def test_groups_of_two_with_leave_one_out_are_never_normalised():
    # k = 1 other sample: the Bessel factor k/(k-1) is infinite and 0 * inf = NaN -> std 0.
    baseline, std = baseline_and_std_per_prompt(ids(0, 0, 1, 1), t([3.0, 1.0, 0.25, 2.0]))
    close(baseline, [1.0, 3.0, 2.0, 0.25])
    close(std, [0.0, 0.0, 0.0, 0.0])
    for normalize in (True, False):
        adv = grpo_advantages(
            ids(0, 0, 1, 1), t([3.0, 1.0, 0.25, 2.0]), torch.ones(4, 3), normalize_rewards=normalize
        )
        close(adv[:, 2], [2.0, -2.0, -1.75, 1.75])


def test_zero_variance_group_gets_zero_advantage_and_zero_std():
    for loo in (True, False):
        baseline, std = baseline_and_std_per_prompt(ids(0, 0, 0, 0), t([0.5] * 4), leave_one_out_baseline=loo)
        close(baseline, [0.5] * 4)
        assert torch.equal(std, torch.zeros(4))
        adv = grpo_advantages(ids(0, 0, 0, 0), t([0.5] * 4), torch.ones(4, 3), use_leave_one_out_baseline=loo)
        assert torch.equal(adv, torch.zeros(4, 3))


def test_single_sample_group_gets_its_own_reward_as_baseline():
    baseline, std = baseline_and_std_per_prompt(ids(0, 1, 1), t([0.7, 1.0, 0.0]))
    close(baseline[0], 0.7)
    close(std[0], 0.0)
    assert grpo_advantages(ids(0, 1, 1), t([0.7, 1.0, 0.0]), torch.ones(3, 2))[0].abs().max() == 0


def test_duplicate_prompts_anywhere_in_the_batch_form_one_group():
    # Rows 0 and 2 share a prompt, rows 1 and 3 another: groups [1, 0] and [0, 1] (mean 0.5).
    prompt_ids = torch.tensor([[7, 8], [9, 9], [7, 8], [9, 9]])
    rewards = t([1.0, 0.0, 0.0, 1.0])
    baseline, std = baseline_and_std_per_prompt(prompt_ids, rewards, leave_one_out_baseline=False)
    close(baseline, [0.5] * 4)
    close(std, [SQRT_HALF] * 4)
    # Same numbers as the contiguous layout [[7,8],[7,8],[9,9],[9,9]], permuted.
    perm = torch.tensor([0, 2, 1, 3])
    adv = grpo_advantages(prompt_ids, rewards, torch.ones(4, 2), use_leave_one_out_baseline=False)
    adv_contig = grpo_advantages(
        prompt_ids[perm], rewards[perm], torch.ones(4, 2), use_leave_one_out_baseline=False
    )
    close(adv[perm], adv_contig)


def test_valid_mask_invalid_rows_still_get_a_value_from_the_formula():
    # Group [a, b, c] with c invalid, leave-one-out: k = 2 valid - 1 = 1. Valid rows see the other valid
    # row; the invalid row's leave-one-out sum covers both valid rows, still divided by k = 1.
    baseline, _ = baseline_and_std_per_prompt(
        ids(0, 0, 0), t([0.25, 1.0, 9.0]), valid_mask=t([1.0, 1.0, 0.0])
    )
    close(baseline, [1.0, 0.25, 1.25])
    baseline, std = baseline_and_std_per_prompt(
        ids(0, 0, 0), t([0.25, 1.0, 9.0]), valid_mask=t([1.0, 1.0, 0.0]), leave_one_out_baseline=False
    )
    close(baseline, [0.625] * 3)
    close(std, [math.sqrt(2 * 0.375**2)] * 3)  # Bessel std of [0.25, 1.0]
    # A group with at most one valid row: each row its own reward, std 0.
    baseline, std = baseline_and_std_per_prompt(ids(0, 0), t([0.3, 0.9]), valid_mask=t([1.0, 0.0]))
    close(baseline, [0.3, 0.9])
    close(std, [0.0, 0.0])


def test_std_rewards_change_the_std_but_not_the_baseline():
    baseline, std = baseline_and_std_per_prompt(
        ids(0, 0, 0), t([1.0, 2.0, 3.0]), leave_one_out_baseline=False, std_rewards=t([0.0, 0.0, 4.0])
    )
    close(baseline, [2.0] * 3)
    # Bessel std of [0, 0, 4]: mean 4/3, variance ((4/3)^2 * 2 + (8/3)^2) / 2 = 48/9.
    close(std, [math.sqrt(48) / 3] * 3, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# GRPO advantages and clipping
# --------------------------------------------------------------------------------------------------


def test_grpo_advantage_is_broadcast_to_every_column_even_masked_ones():
    mask = t([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    adv = grpo_advantages(ids(0, 0), t([1.0, 0.0]), mask)
    assert adv.shape == (2, 4)
    close(adv, [[1.0] * 4, [-1.0] * 4])


def test_grpo_unnormalised_is_reward_minus_baseline():
    adv = grpo_advantages(ids(0, 0, 0), t([1.0, 0.0, 0.5]), torch.ones(3, 1), normalize_rewards=False)
    close(adv[:, 0], [1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5])


def test_grpo_keeps_the_rewards_dtype():
    adv = grpo_advantages(ids(0, 0, 0), t([1.0, 0.0, 0.5], torch.float64), torch.ones(3, 2))
    assert adv.dtype == torch.float64


def test_clip_advantages_bounds_are_optional():
    adv = t([[-2.0, -0.5, 0.0, 0.7, 3.0]])
    close(clip_advantages(adv), adv)
    close(clip_advantages(adv, advantage_clip_low=-0.8), [[-0.8, -0.5, 0.0, 0.7, 3.0]])
    close(clip_advantages(adv, advantage_clip_high=1.1), [[-2.0, -0.5, 0.0, 0.7, 1.1]])
    close(clip_advantages(adv, -0.8, 1.1), [[-0.8, -0.5, 0.0, 0.7, 1.1]])
    assert not clip_advantages(adv).data_ptr() == adv.data_ptr()  # a new tensor, not the input


# --------------------------------------------------------------------------------------------------
# GDPO
# --------------------------------------------------------------------------------------------------


def test_gdpo_hand_computed_two_components():
    # Two groups of two, leave-one-out (never normalised): component advantages are differences.
    prompt_ids = ids(0, 0, 1, 1)
    comps = {"reward/b": t([1.0, 0.0, 0.0, 0.0]), "reward/a": t([0.0, 0.0, 1.0, 0.0])}
    # a: [0, 0, 1, -1]; b: [1, -1, 0, 0]; weights in sorted order (a, b) = (2, 1): A = [1, -1, 2, -2].
    adv = gdpo_advantages(prompt_ids, comps, torch.ones(4, 3), reward_weights=[2.0, 1.0])
    a = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    expected = (a - a.mean()) / a.std()  # mean 0, Bessel std sqrt(10/3)
    close(adv[:, 0], expected)
    close(adv[:, 2], expected)


def test_gdpo_weights_follow_sorted_keys_not_insertion_order():
    prompt_ids = ids(0, 0, 0, 1, 1, 1)
    x = t([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    y = t([0.2, 0.9, 0.4, 0.1, 0.3, 0.8])
    mask = torch.ones(6, 2)
    forward = gdpo_advantages(prompt_ids, {"reward/a": x, "reward/b": y}, mask, reward_weights=[1.0, 0.0])
    backward = gdpo_advantages(prompt_ids, {"reward/b": y, "reward/a": x}, mask, reward_weights=[1.0, 0.0])
    close(forward, backward)
    # Weight 0 on "reward/b": the result is the batch-standardised GRPO advantage of "reward/a".
    a = grpo_advantages(prompt_ids, x, mask).to(torch.float64)[:, 0]
    close(forward[:, 0], (a - a.mean()) / a.std())


def test_gdpo_all_zero_combined_advantage_is_only_centred():
    adv = gdpo_advantages(ids(0, 0, 1, 1), {"r/a": t([1.0] * 4), "r/b": t([0.5] * 4)}, torch.ones(4, 2))
    assert torch.equal(adv, torch.zeros(4, 2))


# --------------------------------------------------------------------------------------------------
# Reinforce++ and raw reward
# --------------------------------------------------------------------------------------------------


def test_reinforce_plus_plus_whitens_over_the_mask_and_transforms_masked_positions():
    # Group [1, 0] minus its mean: a = [0.5, -0.5] on rows; mask keeps 3 tokens (row 1 col 1 masked).
    mask = t([[1.0, 1.0], [1.0, 0.0]])
    adv = reinforce_plus_plus_advantages(ids(0, 0), t([1.0, 0.0]), mask)
    # mu = (0.5 + 0.5 - 0.5)/3 = 1/6; var = ((1/3)^2 * 2 + (2/3)^2)/3 = 2/9; rsqrt = 3/sqrt(2).
    close(adv, [[1 / math.sqrt(2)] * 2, [-math.sqrt(2)] * 2])


def test_reinforce_plus_plus_uses_the_plain_group_mean_not_leave_one_out():
    rewards = t([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = reinforce_plus_plus_advantages(ids(0, 0, 0, 1, 1, 1), rewards, torch.ones(6, 1))
    a = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0], dtype=torch.float64)
    close(adv[:, 0], (a - a.mean()) / a.std(unbiased=False))


def test_reinforce_plus_plus_kl_in_reward_subtracts_beta_times_k1():
    # minus_baseline off and equal rewards: a = -beta * k1 = -beta * (logp - logp_ref), then whitened.
    logp = t([[-1.0, -2.0], [-0.5, -1.5]])
    ref = t([[-1.5, -2.0], [-0.5, -0.5]])
    adv = reinforce_plus_plus_advantages(
        ids(0, 1),
        t([1.0, 1.0]),
        torch.ones(2, 2),
        minus_baseline=False,
        use_kl_in_reward=True,
        reference_policy_kl_penalty=0.5,
        reference_policy_kl_type="k1",
        logprobs_policy=logp,
        logprobs_reference=ref,
    )
    a = 1.0 - 0.5 * torch.tensor([[0.5, 0.0], [0.0, -1.0]], dtype=torch.float64)
    close(adv, (a - a.mean()) / a.std(unbiased=False))


def test_reinforce_plus_plus_constant_advantage_uses_the_variance_floor():
    adv = reinforce_plus_plus_advantages(ids(0, 0), t([1.0, 1.0]), torch.ones(2, 3), minus_baseline=False)
    assert torch.equal(adv, torch.zeros(2, 3))


def test_raw_reward_advantages():
    mask = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    close(raw_reward_advantages(t([2.0, -1.0]), mask, normalize_advantages=False), [[2.0] * 3, [-1.0] * 3])
    # Valid tokens hold [2, 2, -1]: mu = 1, biased var = 2.
    adv = raw_reward_advantages(t([2.0, -1.0]), mask)
    close(adv, [[1 / math.sqrt(2)] * 3, [-2 / math.sqrt(2)] * 3])
    # An all-zero mask divides by max(0, 1) = 1: mu = 0, var = 0 -> r * rsqrt(1e-8).
    close(raw_reward_advantages(t([2.0, -1.0]), torch.zeros(2, 2)), [[2e4] * 2, [-1e4] * 2], atol=1e-2)


# --------------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------------


def test_gae_two_steps_by_hand():
    # gamma 0.9, lambda 0.8, values [0.5, 0.2], reward 1 at the last token.
    # t=1: delta = 1 - 0.2 = 0.8 -> A = 0.8.  t=0: delta = 0.9*0.2 - 0.5 = -0.32 -> A = -0.32 + 0.72*0.8.
    adv, ret = gae_advantages(
        t([1.0]), t([[1.0, 1.0]]), t([[0.5, 0.2]]), gae_lambda=0.8, gae_gamma=0.9, normalize_advantages=False
    )
    close(adv, [[0.256, 0.8]])
    close(ret, [[0.756, 1.0]])


def test_gae_skips_masked_steps_and_zeroes_them_but_not_the_returns():
    # Same numbers with a masked token in the middle (value 9 ignored) and padding at the end.
    adv, ret = gae_advantages(
        t([1.0]),
        t([[1.0, 0.0, 1.0, 0.0]]),
        t([[0.5, 9.0, 0.2, 4.0]]),
        gae_lambda=0.8,
        gae_gamma=0.9,
        normalize_advantages=False,
    )
    close(adv, [[0.256, 0.0, 0.8, 0.0]])
    # Masked positions carry the running advantage: returns = carried A + V there (0.8 + 9, 0 + 4).
    close(ret, [[0.756, 9.8, 1.0, 4.0]])


def test_gae_lambda_one_gamma_one_returns_are_the_final_reward():
    values = t([[0.3, -0.2, 0.9], [0.1, 0.4, 0.0]])
    adv, ret = gae_advantages(
        t([2.0, -1.0]),
        t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        values,
        gae_lambda=1.0,
        normalize_advantages=False,
    )
    close(ret[0], [2.0, 2.0, 2.0])
    close(ret[1, :2], [-1.0, -1.0])
    close(adv, [[1.7, 2.2, 1.1], [-1.1, -1.4, 0.0]])


def test_gae_length_adaptive_alpha_sets_lambda_policy_per_row():
    # alpha = 0.05: a row of 10 tokens gets lambda = clamp(1 - 1/max(0.5, 1)) = 0 (one-step TD errors);
    # a row of 40 tokens gets 1 - 1/2 = 0.5. Returns use gae_lambda_value (1.0: Monte-Carlo returns).
    g = torch.Generator().manual_seed(0)
    values = torch.rand(2, 40, generator=g)
    mask = torch.ones(2, 40)
    mask[0, 10:] = 0
    rewards = t([1.0, 0.5])
    adv, ret = gae_advantages(
        rewards, mask, values, gae_lambda_value=1.0, length_adaptive_alpha=0.05, normalize_advantages=False
    )
    td = torch.cat([values[0, 1:10], t([0.0])]) - values[0, :10]
    td[9] += 1.0
    close(adv[0, :10], td, atol=1e-5)
    adv_half, _ = gae_advantages(
        rewards[1:], mask[1:], values[1:], gae_lambda=0.5, normalize_advantages=False
    )
    close(adv[1], adv_half[0], atol=1e-5)
    close(ret[0, :10], [1.0] * 10, atol=1e-5)
    close(ret[1], [0.5] * 40, atol=1e-5)


def test_gae_lambda_policy_and_value_are_decoupled():
    g = torch.Generator().manual_seed(1)
    values, mask, rewards = torch.rand(3, 6, generator=g), torch.ones(3, 6), torch.rand(3, generator=g)
    adv, ret = gae_advantages(
        rewards, mask, values, gae_lambda_policy=0.3, gae_lambda_value=0.9, normalize_advantages=False
    )
    adv_03, _ = gae_advantages(rewards, mask, values, gae_lambda=0.3, normalize_advantages=False)
    _, ret_09 = gae_advantages(rewards, mask, values, gae_lambda=0.9, normalize_advantages=False)
    close(adv, adv_03)
    close(ret, ret_09)


def test_gae_normalisation_uses_bessel_variance_over_valid_tokens():
    g = torch.Generator().manual_seed(2)
    values, rewards = torch.rand(3, 5, generator=g), torch.rand(3, generator=g)
    mask = t([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    raw, ret_raw = gae_advantages(rewards, mask, values, normalize_advantages=False)
    adv, ret = gae_advantages(rewards, mask, values)
    valid = raw[mask > 0].to(torch.float64)
    expected = (valid - valid.mean()) / torch.sqrt(valid.var(unbiased=True) + 1e-8)
    close(adv[mask > 0], expected, atol=1e-5)
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))
    close(ret, ret_raw)  # returns are never whitened


def test_gae_kl_in_reward_is_a_per_token_penalty():
    # k1 with beta 0.5, lambda = gamma = 1, zero values: A_t = sum of future token rewards.
    logp, ref = t([[-1.0, -2.0, -0.5]]), t([[-1.5, -2.0, -1.5]])  # k1 = logp - ref = [0.5, 0, 1]
    adv, _ = gae_advantages(
        t([1.0]),
        torch.ones(1, 3),
        torch.zeros(1, 3),
        gae_lambda=1.0,
        normalize_advantages=False,
        use_kl_in_reward=True,
        reference_policy_kl_penalty=0.5,
        reference_policy_kl_type="k1",
        logprobs_policy=logp,
        logprobs_reference=ref,
    )
    # token rewards [-0.25, 0, -0.5 + 1] -> rewards-to-go [0.25, 0.5, 0.5]
    close(adv, [[0.25, 0.5, 0.5]])


# --------------------------------------------------------------------------------------------------
# Reward scaling
# --------------------------------------------------------------------------------------------------


def test_scale_rewards_clamps_then_maps_linearly():
    x = t([-1.0, 0.0, 0.4, 0.8, 1.0])
    close(
        scale_rewards(x, source_min=0.0, source_max=0.8, target_min=-1.0, target_max=1.0), [-1, -1, 0, 1, 1]
    )
    close(scale_rewards(x), [0.0, 0.0, 0.4, 0.8, 1.0])  # defaults: clamp to [0, 1], identity map


# --------------------------------------------------------------------------------------------------
# Validation errors
# --------------------------------------------------------------------------------------------------


def test_prompt_ids_validation():
    with pytest.raises(TypeError, match="prompt_ids must be an integer tensor"):
        grpo_advantages(ids(0, 0).float(), t([1.0, 0.0]), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"prompt_ids must be a 2-D \[B, L\] tensor, got shape \(2,\)"):
        grpo_advantages(torch.tensor([0, 0]), t([1.0, 0.0]), torch.ones(2, 2))
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        grpo_advantages(torch.zeros(0, 2, dtype=torch.int64), t([]), torch.ones(0, 2))
    with pytest.raises(TypeError, match="prompt_ids must be a torch.Tensor"):
        baseline_and_std_per_prompt([[0], [0]], t([1.0, 0.0]))


def test_rewards_and_mask_validation():
    with pytest.raises(ValueError, match=r"rewards must be a 1-D \[B\] tensor .*got shape \(2, 1\)"):
        grpo_advantages(ids(0, 0), t([[1.0], [0.0]]), torch.ones(2, 2))
    with pytest.raises(ValueError, match="rewards has 3 rows, expected B = 2"):
        grpo_advantages(ids(0, 0), t([1.0, 0.0, 1.0]), torch.ones(2, 2))
    with pytest.raises(TypeError, match="rewards must be a floating tensor"):
        grpo_advantages(ids(0, 0), torch.tensor([1, 0]), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"mask must be a 2-D \[B, S\] tensor, got shape \(2,\)"):
        grpo_advantages(ids(0, 0), t([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match="mask has 3 rows but rewards has B = 2"):
        reinforce_plus_plus_advantages(ids(0, 0), t([1.0, 0.0]), torch.ones(3, 2))
    with pytest.raises(ValueError, match="rewards is empty"):
        raw_reward_advantages(t([]), torch.ones(0, 2))
    with pytest.raises(ValueError, match=r"valid_mask must be \[B\] = \(2,\)"):
        baseline_and_std_per_prompt(ids(0, 0), t([1.0, 0.0]), valid_mask=torch.ones(2, 1))
    with pytest.raises(ValueError, match="std_rewards has 1 rows"):
        baseline_and_std_per_prompt(ids(0, 0), t([1.0, 0.0]), std_rewards=t([1.0]))
    with pytest.raises(TypeError, match="leave_one_out_baseline must be a bool"):
        baseline_and_std_per_prompt(ids(0, 0), t([1.0, 0.0]), leave_one_out_baseline=1)


def test_clip_and_scale_validation():
    with pytest.raises(
        ValueError, match=r"advantage_clip_low \(1.0\) must be <= advantage_clip_high \(-1.0\)"
    ):
        clip_advantages(torch.zeros(2, 2), advantage_clip_low=1.0, advantage_clip_high=-1.0)
    with pytest.raises(TypeError, match="advantage_clip_high must be a number or None"):
        clip_advantages(torch.zeros(2, 2), advantage_clip_high="1")
    with pytest.raises(ValueError, match=r"source_max \(0.0\) must be > source_min \(0.0\)"):
        scale_rewards(t([0.5]), source_min=0.0, source_max=0.0)
    with pytest.raises(TypeError, match="rewards must be a floating tensor"):
        scale_rewards(torch.tensor([1]))


def test_gdpo_validation():
    with pytest.raises(ValueError, match="GDPO needs at least 2 reward components, got 1"):
        gdpo_advantages(ids(0, 0), {"reward/a": t([1.0, 0.0])}, torch.ones(2, 2))
    with pytest.raises(ValueError, match="reward_weights has 3 entries but there are 2 reward components"):
        gdpo_advantages(
            ids(0, 0), {"a": t([1.0, 0.0]), "b": t([0.0, 1.0])}, torch.ones(2, 2), reward_weights=[1, 1, 1]
        )
    with pytest.raises(ValueError, match=r"reward_components\['b'\] has 3 rows, expected B = 2"):
        gdpo_advantages(ids(0, 0), {"a": t([1.0, 0.0]), "b": t([0.0, 1.0, 1.0])}, torch.ones(2, 2))
    with pytest.raises(TypeError, match="reward_components must be a dict"):
        gdpo_advantages(ids(0, 0), [t([1.0, 0.0]), t([1.0, 0.0])], torch.ones(2, 2))


def test_kl_and_gae_validation():
    with pytest.raises(
        ValueError, match="use_kl_in_reward=True needs both logprobs_policy and logprobs_reference"
    ):
        reinforce_plus_plus_advantages(ids(0, 0), t([1.0, 0.0]), torch.ones(2, 2), use_kl_in_reward=True)
    with pytest.raises(ValueError, match="reference_policy_kl_type must be one of"):
        reinforce_plus_plus_advantages(
            ids(0, 0), t([1.0, 0.0]), torch.ones(2, 2), reference_policy_kl_type="k4"
        )
    with pytest.raises(
        ValueError, match=r"logprobs_policy must have the shape of mask \(2, 2\), got \(2, 3\)"
    ):
        gae_advantages(
            t([1.0, 0.0]),
            torch.ones(2, 2),
            torch.zeros(2, 2),
            use_kl_in_reward=True,
            logprobs_policy=torch.zeros(2, 3),
            logprobs_reference=torch.zeros(2, 2),
        )
    with pytest.raises(ValueError, match=r"values must have the shape of mask \(2, 2\), got \(2, 3\)"):
        gae_advantages(t([1.0, 0.0]), torch.ones(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"gae_lambda must lie in \[0, 1\], got 1.5"):
        gae_advantages(t([1.0, 0.0]), torch.ones(2, 2), torch.zeros(2, 2), gae_lambda=1.5)
    with pytest.raises(ValueError, match="length_adaptive_alpha must be >= 0"):
        gae_advantages(t([1.0, 0.0]), torch.ones(2, 2), torch.zeros(2, 2), length_adaptive_alpha=-0.1)
    with pytest.raises(ValueError, match="normalize_advantages needs at least 2 valid tokens"):
        gae_advantages(t([1.0, 0.0]), t([[1.0, 0.0], [0.0, 0.0]]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mask has no valid token"):
        reinforce_plus_plus_advantages(ids(0, 0), t([1.0, 0.0]), torch.zeros(2, 2))


# --------------------------------------------------------------------------------------------------
# Golden adapters: they must refuse what they do not understand (the parity itself is in
# tests/test_golden_parity.py)
# --------------------------------------------------------------------------------------------------


def _case(name: str) -> dict:
    return json.loads((GOLDEN_DIR / name).read_text())


@pytest.mark.parametrize(
    "name, section",
    [
        ("adv_grpo_loo_norm.json", "adv_estimator"),
        ("adv_gae_standard.json", "loss_fn"),
        ("adv_scale_rewards.json", "reward_scaling"),
        ("adv_baseline_std_dapo_std_rewards.json", None),
    ],
)
def test_golden_adapter_rejects_unknown_config_key(name, section):
    case = _case(name)
    (case["config"] if section is None else case["config"][section])["entropy_coef"] = 0.01
    with pytest.raises(ValueError, match="entropy_coef"):
        ADVANTAGE_ADAPTERS[case["function"]](case)


def test_golden_adapter_rejects_unknown_input_and_wrong_estimator_name():
    case = _case("adv_rpp_baseline.json")
    bad = copy.deepcopy(case)
    bad["inputs"]["token_level_rewards"] = bad["inputs"]["mask"]
    with pytest.raises(ValueError, match="token_level_rewards"):
        ADVANTAGE_ADAPTERS[case["function"]](bad)
    bad = copy.deepcopy(case)
    bad["config"]["adv_estimator"]["name"] = "grpo"
    with pytest.raises(ValueError, match="adv_estimator.name is 'grpo'"):
        ADVANTAGE_ADAPTERS[case["function"]](bad)


def test_golden_adapters_cover_every_advantage_function_in_the_cases():
    functions = {_case(p.name)["function"] for p in GOLDEN_DIR.glob("adv_*.json")}
    assert functions == set(ADVANTAGE_ADAPTERS)


@pytest.mark.parametrize(
    ("group", "dtype", "first"),
    [
        ([0.9, 0.2], torch.float64, 0.7),
        ([1.0, 0.3, 0.3], torch.float64, 0.7),
        ([0.7, 0.1, 0.1, 0.1], torch.float32, 0.6),
    ],
)
def test_equal_non_dyadic_others_give_zero_std_not_round_off(group, dtype, first):
    # The leave-one-out "others" of row 0 are all equal but not exact in binary (0.2, 0.3, 0.1):
    # their std must be exactly 0 so row 0 keeps its raw advantage, not a round-off blow-up.
    rewards = torch.tensor(group, dtype=dtype)
    adv = grpo_advantages(torch.zeros(len(group), 1, dtype=torch.long), rewards, torch.ones(len(group), 3))
    assert adv[0, 0].item() == pytest.approx(first, rel=1e-6)
    assert torch.all(adv.abs() < 10)


# --------------------------------------------------------------------------------------------------
# On-policy distillation
# --------------------------------------------------------------------------------------------------


def test_opd_advantage_is_the_masked_teacher_student_gap_and_carries_no_gradient():
    teacher = t([[-0.5, -1.0, -2.0]]).requires_grad_(True)
    student = t([[-1.0, -1.0, -0.5]]).requires_grad_(True)
    adv = opd_advantages(t([[1.0, 0.5, 0.0]]), teacher, student)
    close(adv, [[0.5, 0.0, 0.0]])
    assert not adv.requires_grad
    m = opd_metrics(t([[1.0, 1.0, 0.0]]), teacher, student)
    assert m["on_policy_distillation/adv_mean"] == pytest.approx(0.25)
    assert m["on_policy_distillation/adv_std"] == pytest.approx(math.sqrt(0.125))
    none_valid = opd_metrics(torch.zeros(1, 3), teacher, student)
    assert set(none_valid.values()) == {0.0}


def test_opd_validation():
    with pytest.raises(ValueError, match="OPD requires teacher_logprobs"):
        opd_advantages(torch.ones(1, 2), None, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="OPD requires prev_logprobs"):
        opd_advantages(torch.ones(1, 2), torch.zeros(1, 2), None)
    with pytest.raises(ValueError, match=r"prev_logprobs must have the shape of mask \(1, 2\)"):
        opd_advantages(torch.ones(1, 2), torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"mask must be a 2-D \[B, S\] tensor"):
        opd_metrics(torch.ones(2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(TypeError, match="disable_ppo_ratio must be a bool"):
        opd_loss_fn_recommendations(1, True, "icepop")
    with pytest.raises(TypeError, match="truncated_importance_sampling_type must be a str or None"):
        opd_loss_fn_recommendations(True, True, 3)
    assert len(opd_loss_fn_recommendations(True, True, None)) == 1
    with pytest.raises(TypeError, match="train_seq_len must be an int"):
        pad_teacher_logprobs(torch.zeros(1, 2), 3.0)
    with pytest.raises(ValueError, match=r"teacher_logprobs must be a 2-D"):
        pad_teacher_logprobs(torch.zeros(2), 3)
