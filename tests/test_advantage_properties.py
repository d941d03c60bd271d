"""Property tests (hypothesis): invariants of the advantage estimators over random groups and masks.

Rewards are drawn on a dyadic grid (multiples of 1/4 in [-2, 2]) and computed in float64, so a group
with equal rewards has a std of exactly 0 and a group with different rewards a std of at least ~0.18;
equalities then hold to ~1e-9 (or to the size of the 1e-6 eps where the eps is the point).
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rlref.advantages import (
    baseline_and_std_per_prompt,
    gae_advantages,
    gdpo_advantages,
    group_ids,
    grpo_advantages,
    reinforce_plus_plus_advantages,
    scale_rewards,
)

FAST = settings(max_examples=50, deadline=None)
F64 = torch.float64
GRID = st.integers(-8, 8).map(lambda k: k / 4)


def close(got, expected, atol=1e-9, rtol=0.0):
    torch.testing.assert_close(got.to(F64), torch.as_tensor(expected, dtype=F64), atol=atol, rtol=rtol)


@st.composite
def grouped_batches(draw, min_size: int = 1, max_groups: int = 4, max_size: int = 6):
    """(prompt_ids [B, 3] int64 with groups interleaved in random order, rewards [B] float64, group sizes)."""
    sizes = draw(st.lists(st.integers(min_size, max_size), min_size=1, max_size=max_groups))
    labels = [g for g, n in enumerate(sizes) for _ in range(n)]
    order = draw(st.permutations(range(len(labels))))
    labels = [labels[i] for i in order]
    rewards = draw(st.lists(GRID, min_size=len(labels), max_size=len(labels)))
    prompt_ids = torch.tensor([[g, 7, 10 * g] for g in labels], dtype=torch.int64)
    return prompt_ids, torch.tensor(rewards, dtype=F64), sizes


def members(prompt_ids: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each group."""
    g = group_ids(prompt_ids)
    return [torch.nonzero(g == k).squeeze(1) for k in torch.unique(g)]


def ones(rewards: torch.Tensor, seq: int = 3) -> torch.Tensor:
    return torch.ones(rewards.shape[0], seq, dtype=F64)


# --------------------------------------------------------------------------------------------------
# Baseline and std
# --------------------------------------------------------------------------------------------------


@FAST
@given(grouped_batches())
def test_leave_one_out_baseline_is_the_mean_of_the_other_rows_and_std_their_bessel_std(batch):
    prompt_ids, rewards, _ = batch
    baseline, std = baseline_and_std_per_prompt(prompt_ids, rewards, leave_one_out_baseline=True)
    exp_baseline, exp_std = torch.empty_like(rewards), torch.empty_like(rewards)
    for rows in members(prompt_ids):
        for i in rows.tolist():
            others = rewards[[j for j in rows.tolist() if j != i]]
            # A group of one keeps its own reward (advantage 0); fewer than two others: std 0.
            exp_baseline[i] = others.mean() if len(others) else rewards[i]
            exp_std[i] = others.std(unbiased=True) if len(others) > 1 else 0.0
    close(baseline, exp_baseline)
    close(std, exp_std, atol=1e-7)


@FAST
@given(grouped_batches())
def test_mean_baseline_is_the_group_mean_and_std_the_group_bessel_std(batch):
    prompt_ids, rewards, _ = batch
    baseline, std = baseline_and_std_per_prompt(prompt_ids, rewards, leave_one_out_baseline=False)
    for rows in members(prompt_ids):
        r = rewards[rows]
        if len(rows) == 1:
            close(baseline[rows], r)
            close(std[rows], [0.0])
        else:
            close(baseline[rows], r.mean().expand(len(rows)))
            close(std[rows], r.std(unbiased=True).expand(len(rows)), atol=1e-7)


@FAST
@given(grouped_batches(), st.booleans())
def test_unnormalised_advantages_sum_to_zero_per_group_for_both_baselines(batch, loo):
    prompt_ids, rewards, _ = batch
    adv = grpo_advantages(
        prompt_ids, rewards, ones(rewards), normalize_rewards=False, use_leave_one_out_baseline=loo
    )
    for rows in members(prompt_ids):
        close(adv[rows, 0].sum(), 0.0)


@FAST
@given(grouped_batches(min_size=2))
def test_leave_one_out_advantage_is_n_over_n_minus_1_times_the_mean_baseline_advantage(batch):
    # r_i - mean_{-i} = r_i - (n mean - r_i)/(n-1) = n/(n-1) (r_i - mean)
    prompt_ids, rewards, _ = batch
    loo = grpo_advantages(prompt_ids, rewards, ones(rewards), normalize_rewards=False)
    mean = grpo_advantages(
        prompt_ids, rewards, ones(rewards), normalize_rewards=False, use_leave_one_out_baseline=False
    )
    for rows in members(prompt_ids):
        n = len(rows)
        close(loo[rows], n / (n - 1) * mean[rows])


# --------------------------------------------------------------------------------------------------
# GRPO invariances
# --------------------------------------------------------------------------------------------------


@FAST
@given(grouped_batches(), st.booleans(), st.booleans(), st.data())
def test_grpo_advantages_are_invariant_to_adding_a_constant_to_a_group(batch, normalize, loo, data):
    prompt_ids, rewards, sizes = batch
    shifts = torch.tensor(data.draw(st.lists(GRID, min_size=len(sizes), max_size=len(sizes))), dtype=F64) * 5
    shifted = rewards + shifts[group_ids(prompt_ids)]
    kwargs = dict(normalize_rewards=normalize, use_leave_one_out_baseline=loo)
    close(
        grpo_advantages(prompt_ids, shifted, ones(rewards), **kwargs),
        grpo_advantages(prompt_ids, rewards, ones(rewards), **kwargs),
    )


@FAST
@given(grouped_batches(), st.booleans(), st.integers(1, 32).map(lambda k: k / 4))
def test_normalised_grpo_advantages_are_scale_free_where_std_is_positive_and_scale_where_it_is_zero(
    batch, loo, c
):
    # a / (std + 1e-6) vs c a / (c std + 1e-6): equal up to the eps (relative 1e-6 |1/c - 1| / std).
    prompt_ids, rewards, _ = batch
    kwargs = dict(use_leave_one_out_baseline=loo)
    adv = grpo_advantages(prompt_ids, rewards, ones(rewards), **kwargs)
    scaled = grpo_advantages(prompt_ids, c * rewards, ones(rewards), **kwargs)
    _, std = baseline_and_std_per_prompt(prompt_ids, rewards, leave_one_out_baseline=loo)
    pos = std > 0
    close(scaled[pos], adv[pos], atol=1e-6, rtol=1e-4)
    close(scaled[~pos], c * adv[~pos])


@FAST
@given(grouped_batches(), st.booleans(), st.booleans(), st.randoms(use_true_random=False))
def test_grpo_advantages_are_permutation_equivariant(batch, normalize, loo, rnd):
    prompt_ids, rewards, _ = batch
    perm = list(range(rewards.shape[0]))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    kwargs = dict(normalize_rewards=normalize, use_leave_one_out_baseline=loo)
    close(
        grpo_advantages(prompt_ids[perm], rewards[perm], ones(rewards), **kwargs),
        grpo_advantages(prompt_ids, rewards, ones(rewards), **kwargs)[perm],
    )


# --------------------------------------------------------------------------------------------------
# GDPO
# --------------------------------------------------------------------------------------------------


def standardise(x: torch.Tensor) -> torch.Tensor:
    s = x.std(unbiased=True)
    return (x - x.mean()) / s if s > 0 else x - x.mean()


@FAST
@given(grouped_batches(), st.integers(2, 4), st.booleans(), st.booleans())
def test_gdpo_of_a_repeated_component_equals_the_batch_standardised_grpo_advantage(
    batch, copies, normalize, loo
):
    prompt_ids, rewards, _ = batch
    if rewards.shape[0] < 2:
        rewards, prompt_ids = rewards.repeat(2), prompt_ids.repeat(2, 1)
    kwargs = dict(normalize_rewards=normalize, use_leave_one_out_baseline=loo)
    comps = {f"reward/c{k}": rewards.clone() for k in range(copies)}
    gdpo = gdpo_advantages(prompt_ids, comps, ones(rewards), **kwargs)
    grpo = grpo_advantages(prompt_ids, rewards, ones(rewards), **kwargs)[:, 0]
    close(gdpo[:, 0], standardise(grpo), atol=1e-7)


@FAST
@given(grouped_batches(), st.data(), st.integers(1, 16).map(lambda k: k / 4))
def test_gdpo_is_batch_standardised_and_invariant_to_scaling_all_weights(batch, data, c):
    prompt_ids, rewards, _ = batch
    if rewards.shape[0] < 2:
        rewards, prompt_ids = rewards.repeat(2), prompt_ids.repeat(2, 1)
    other = torch.tensor(data.draw(st.lists(GRID, min_size=len(rewards), max_size=len(rewards))), dtype=F64)
    weights = data.draw(st.lists(st.integers(0, 4).map(float), min_size=2, max_size=2))
    comps = {"reward/x": rewards, "reward/y": other}
    adv = gdpo_advantages(prompt_ids, comps, ones(rewards), reward_weights=weights)[:, 0]
    close(adv.mean(), 0.0)
    assert abs(float(adv.std(unbiased=True)) - 1.0) < 1e-9 or torch.equal(adv, torch.zeros_like(adv))
    rescaled = gdpo_advantages(prompt_ids, comps, ones(rewards), reward_weights=[c * w for w in weights])
    close(rescaled[:, 0], adv, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Reinforce++
# --------------------------------------------------------------------------------------------------


@FAST
@given(grouped_batches(), st.integers(1, 5), st.integers(0, 2**16), st.booleans(), GRID)
def test_reinforce_plus_plus_is_whitened_over_the_mask_and_invariant_to_a_global_reward_shift(
    batch, seq, seed, minus_baseline, shift
):
    prompt_ids, rewards, _ = batch
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(rewards.shape[0], seq, generator=g) > 0.4).to(F64)
    mask[0, 0] = 1.0
    adv = reinforce_plus_plus_advantages(prompt_ids, rewards, mask, minus_baseline=minus_baseline)
    valid = adv[mask > 0]
    close(valid.mean(), 0.0)
    var = valid.var(unbiased=False)
    assert abs(float(var) - 1.0) < 1e-6 or float(valid.abs().max()) < 1e-6
    shifted = reinforce_plus_plus_advantages(prompt_ids, rewards + shift, mask, minus_baseline=minus_baseline)
    close(shifted, adv, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------------


@st.composite
def gae_batches(draw):
    batch, seq = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, seq, generator=g) > 0.35).to(F64)
    mask[:, 0] = 1.0  # every row has a token
    values = torch.randn(batch, seq, generator=g, dtype=F64)
    rewards = torch.randn(batch, generator=g, dtype=F64)
    gamma = draw(st.sampled_from([1.0, 0.99, 0.9, 0.5]))
    lam = draw(st.sampled_from([0.0, 0.5, 0.95, 1.0]))
    return rewards, mask, values, gamma, lam


@FAST
@given(gae_batches())
def test_gae_masked_steps_are_skipped_as_if_absent_and_their_advantages_are_zero(batch):
    rewards, mask, values, gamma, lam = batch
    adv, _ = gae_advantages(
        rewards, mask, values, gae_lambda=lam, gae_gamma=gamma, normalize_advantages=False
    )
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=F64))
    for b in range(rewards.shape[0]):
        keep = mask[b] > 0
        compact, _ = gae_advantages(
            rewards[b : b + 1],
            torch.ones(1, int(keep.sum()), dtype=F64),
            values[b : b + 1, keep],
            gae_lambda=lam,
            gae_gamma=gamma,
            normalize_advantages=False,
        )
        close(adv[b, keep], compact[0])


@FAST
@given(gae_batches())
def test_gae_lambda_zero_gives_one_step_td_errors_and_lambda_one_gamma_one_gives_reward_returns(batch):
    rewards, _, values, gamma, _ = batch
    mask = torch.ones_like(values)
    adv, _ = gae_advantages(
        rewards, mask, values, gae_lambda=0.0, gae_gamma=gamma, normalize_advantages=False
    )
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    token_rewards = torch.zeros_like(values)
    token_rewards[:, -1] = rewards
    close(adv, token_rewards + gamma * next_values - values)
    _, returns = gae_advantages(
        rewards, mask, values, gae_lambda=1.0, gae_gamma=1.0, normalize_advantages=False
    )
    close(returns, rewards[:, None].expand_as(values))


@FAST
@given(gae_batches())
def test_gae_normalised_advantages_have_zero_mean_and_unit_bessel_variance_over_valid_tokens(batch):
    rewards, mask, values, gamma, lam = batch
    if mask.sum() < 2:
        mask = torch.ones_like(mask)
    assume(mask.sum() >= 2)  # one token cannot be whitened (the function raises; see test_advantages.py)
    adv, _ = gae_advantages(rewards, mask, values, gae_lambda=lam, gae_gamma=gamma)
    valid = adv[mask > 0]
    raw, _ = gae_advantages(
        rewards, mask, values, gae_lambda=lam, gae_gamma=gamma, normalize_advantages=False
    )
    raw_valid = raw[mask > 0]
    raw_var = raw_valid.var(unbiased=True)
    # The mean divides by N + 1e-8, so it is off by mean * 1e-8 / N before the rsqrt(var + 1e-8) scaling.
    bound = (
        2 * (abs(float(raw_valid.mean())) * 1e-8 / len(raw_valid) + 1e-12) / float(torch.sqrt(raw_var + 1e-8))
    )
    close(valid.mean(), 0.0, atol=bound)
    # var(normalised) = raw_var / (raw_var + 1e-8): 1 up to the eps
    close(valid.var(unbiased=True), raw_var / (raw_var + 1e-8), atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Reward scaling
# --------------------------------------------------------------------------------------------------


@FAST
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=10),
    st.floats(-2, 2),
    st.floats(0.1, 3),
    st.floats(-2, 2),
    st.floats(0.1, 3),
    st.booleans(),
)
def test_scale_rewards_is_the_affine_map_of_the_clamped_source_interval_onto_the_target(
    xs, smin, width, tmin, twidth, reversed_target
):
    x = torch.tensor(xs, dtype=F64)
    twidth = -twidth if reversed_target else twidth
    smax, tmax = smin + width, tmin + twidth
    y = scale_rewards(x, source_min=smin, source_max=smax, target_min=tmin, target_max=tmax)
    ends = scale_rewards(torch.tensor([smin, smax], dtype=F64), smin, smax, tmin, tmax)
    close(ends, [tmin, tmax], atol=1e-12)
    # Inverting the affine map recovers the clamped input.
    close(smin + (y - tmin) / (tmax - tmin) * (smax - smin), x.clamp(smin, smax), atol=1e-9)
