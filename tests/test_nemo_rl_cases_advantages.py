"""NeMo RL's own hand-written advantage-estimator test cases, re-expressed for ``rlref.advantages``.

Each test below is one case of NeMo RL's unit tests at commit 7ea279abf; its docstring names the
source as ``tests/unit/algorithms/<file>::<test>`` with the line of the ``def``. Inputs and expected
values carry over; the code is written for rlref's functions. Cases that exercise only NeMo RL's
plumbing (the PPO estimator factory, ``tests/unit/algorithms/test_ppo.py:631,657,675,690``) have no
rlref counterpart and are not ported.

Counts per NeMo RL class / function (asserted at the bottom of this file):

* ``calculate_baseline_and_std_per_prompt`` (``test_utils.py``): 8
* ``GRPOAdvantageEstimator`` (``test_grpo.py``): 5
* ``GDPOAdvantageEstimator`` (``test_grpo.py``): 3
* ``ReinforcePlusPlusAdvantageEstimator`` (``test_grpo.py``): 1
* ``_clip_grpo_advantages`` (``test_grpo.py``): 1
* ``GeneralizedAdvantageEstimator`` (``test_ppo.py``): 8
* ``RawRewardAdvantageEstimator`` (``test_ppo.py``): 1
* ``OPDAdvantageEstimator`` and its set-up (``test_advantage_estimator.py``, ``test_opd.py``): 6
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from rlref.advantages import (
    baseline_and_std_per_prompt,
    clip_advantages,
    gae_advantages,
    gdpo_advantages,
    grpo_advantages,
    opd_advantages,
    opd_loss_fn_recommendations,
    opd_metrics,
    pad_teacher_logprobs,
    raw_reward_advantages,
    reinforce_plus_plus_advantages,
)

SQRT2_INV = 1.0 / math.sqrt(2.0)
UTILS = "tests/unit/algorithms/test_utils.py"
GRPO = "tests/unit/algorithms/test_grpo.py"
PPO = "tests/unit/algorithms/test_ppo.py"
ADV = "tests/unit/algorithms/test_advantage_estimator.py"
OPD = "tests/unit/algorithms/test_opd.py"


def source(path: str, line: int, cls: str):
    """Tag a test with its NeMo RL source case and the class it exercises."""

    def deco(fn):
        fn.nemo_source = (f"{path}::{fn.__name__}", line, cls)
        return fn

    return deco


def two_prompts(n0: int, n1: int) -> torch.Tensor:
    """prompt_ids [n0 + n1, 3]: rows of prompt [1, 2, 3] then rows of prompt [4, 5, 6]."""
    return torch.tensor([[1, 2, 3]] * n0 + [[4, 5, 6]] * n1)


def one_col(*groups: int) -> torch.Tensor:
    """prompt_ids [B, 1] with the given group label per row (NeMo's ``[[0], [0], [1], ...]``)."""
    return torch.tensor([[g] for g in groups])


def gae(rewards, mask, values, **kw):
    kw.setdefault("normalize_advantages", False)  # NeMo's test helper _make_gae_config default
    return gae_advantages(rewards, mask, values, **kw)


# --------------------------------------------------------------------------------------------------
# calculate_baseline_and_std_per_prompt (tests/unit/algorithms/test_utils.py); NeMo's default
# leave_one_out_baseline=True
# --------------------------------------------------------------------------------------------------


@source(UTILS, 556, "calculate_baseline_and_std_per_prompt")
def test_calculate_baseline_and_std_per_prompt_basic():
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_basic (line 556)."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    baseline, std = baseline_and_std_per_prompt(two_prompts(3, 3), rewards, torch.ones(6))
    torch.testing.assert_close(baseline, torch.tensor([2.5, 2.0, 1.5, 5.5, 5.0, 4.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        std, torch.tensor([0.707107, 1.414214, 0.707107, 0.707107, 1.414214, 0.707107]), rtol=1e-5, atol=0
    )


@source(UTILS, 583, "calculate_baseline_and_std_per_prompt")
def test_calculate_baseline_and_std_per_prompt_single_generation_per_prompt():
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_single_generation_per_prompt (line 583)."""
    baseline, std = baseline_and_std_per_prompt(two_prompts(1, 1), torch.tensor([2.5, 4.0]), torch.ones(2))
    torch.testing.assert_close(baseline, torch.tensor([2.5, 4.0]))
    torch.testing.assert_close(std, torch.tensor([0.0, 0.0]))


@source(UTILS, 605, "calculate_baseline_and_std_per_prompt")
def test_calculate_baseline_and_std_per_prompt_identical_rewards():
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_identical_rewards (line 605)."""
    rewards = torch.tensor([3.0, 3.0, 3.0, 7.0, 7.0, 7.0])
    baseline, std = baseline_and_std_per_prompt(two_prompts(3, 3), rewards, torch.ones(6))
    torch.testing.assert_close(baseline, rewards)
    torch.testing.assert_close(std, torch.zeros(6))


@source(UTILS, 630, "calculate_baseline_and_std_per_prompt")
def test_calculate_baseline_and_std_per_prompt_mixed_prompt_sizes():
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_mixed_prompt_sizes (line 630)."""
    rewards = torch.tensor([1.0, 2.0, 4.0, 5.0, 6.0])
    baseline, std = baseline_and_std_per_prompt(two_prompts(2, 3), rewards, torch.ones(5))
    torch.testing.assert_close(baseline, torch.tensor([2.0, 1.0, 5.5, 5.0, 4.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(std, torch.tensor([0.0, 0.0, 0.707107, 1.414214, 0.707107]), rtol=1e-5, atol=0)


@source(UTILS, 654, "calculate_baseline_and_std_per_prompt")
def test_calculate_baseline_and_std_per_prompt_empty_input():
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_empty_input (line 654)."""
    baseline, std = baseline_and_std_per_prompt(
        torch.empty(0, 3, dtype=torch.long), torch.tensor([]), torch.tensor([])
    )
    assert baseline.shape == std.shape == torch.Size([0])


@source(UTILS, 668, "calculate_baseline_and_std_per_prompt")
def test_calculate_baseline_and_std_per_prompt_nan_handling():
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_nan_handling (line 668).

    The invalid row (reward 999) is left out of every baseline; it still gets a value (4.0, the sum
    of its valid group-mates over V - 1 = 1) from the same formula.
    """
    rewards = torch.tensor([1.0, 999.0, 3.0, 4.0, 5.0, 6.0])
    valid = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    baseline, std = baseline_and_std_per_prompt(two_prompts(3, 3), rewards, valid)
    torch.testing.assert_close(baseline, torch.tensor([3.0, 4.0, 1.0, 5.5, 5.0, 4.5]), rtol=1e-5, atol=0)
    expected_std = torch.tensor([0.0, 0.0, 0.0, 0.707107, 1.414214, 0.707107])
    torch.testing.assert_close(std, expected_std, rtol=1e-5, atol=0)


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@source(UTILS, 695, "calculate_baseline_and_std_per_prompt")
@pytest.mark.parametrize("device", _DEVICES)
def test_calculate_baseline_and_std_per_prompt_cuda_compatibility(device):
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_cuda_compatibility (line 695).

    NeMo runs it on CUDA only; here it runs on every available device and checks the results stay
    there. Groups of two with leave-one-out: baseline = the other row, std = 0.
    """
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
    baseline, std = baseline_and_std_per_prompt(
        two_prompts(2, 2).to(device), rewards, torch.ones(4, device=device)
    )
    assert baseline.device.type == std.device.type == device
    torch.testing.assert_close(baseline.cpu(), torch.tensor([2.0, 1.0, 4.0, 3.0]))
    torch.testing.assert_close(std.cpu(), torch.zeros(4))


@source(UTILS, 724, "calculate_baseline_and_std_per_prompt")
def test_calculate_baseline_and_std_per_prompt_numerical_precision():
    """test_utils.py::test_calculate_baseline_and_std_per_prompt_numerical_precision (line 724)."""
    rewards = torch.tensor([1e-8, 2e-8, 3e-8, 1e8, 2e8, 3e8])
    baseline, std = baseline_and_std_per_prompt(two_prompts(3, 3), rewards, torch.ones(6))
    torch.testing.assert_close(
        baseline, torch.tensor([2.5e-8, 2e-8, 1.5e-8, 2.5e8, 2e8, 1.5e8]), rtol=1e-5, atol=0
    )
    assert torch.isfinite(std).all()


# --------------------------------------------------------------------------------------------------
# GRPOAdvantageEstimator (tests/unit/algorithms/test_grpo.py); every case uses
# use_leave_one_out_baseline=False, normalize_rewards=True
# --------------------------------------------------------------------------------------------------


def grpo_mean(prompt_ids, rewards, mask):
    return grpo_advantages(
        prompt_ids, rewards, mask, normalize_rewards=True, use_leave_one_out_baseline=False
    )


@source(GRPO, 4143, "GRPOAdvantageEstimator")
def test_grpo_advantage_estimator_zero_std():
    """test_grpo.py::test_grpo_advantage_estimator_zero_std (line 4143).

    Prompt 0 has equal rewards (std 0: not normalised, advantage 0); prompt 1 has [1, 3], std
    sqrt(2), so +-1/sqrt(2).
    """
    out = grpo_mean(one_col(0, 0, 1, 1), torch.tensor([2.0, 2.0, 1.0, 3.0]), torch.ones(4, 5))
    torch.testing.assert_close(out[:2], torch.zeros(2, 5), rtol=1e-5, atol=1e-8)
    expected = torch.tensor([-SQRT2_INV, SQRT2_INV]).unsqueeze(-1).expand(2, 5)
    torch.testing.assert_close(out[2:], expected, rtol=1e-4, atol=1e-8)


@source(GRPO, 4182, "GRPOAdvantageEstimator")
def test_grpo_advantage_estimator_tensor_shapes():
    """test_grpo.py::test_grpo_advantage_estimator_tensor_shapes (line 4182)."""
    out = grpo_mean(one_col(0, 0), torch.tensor([1.0, 3.0]), torch.ones(2, 3))
    assert out.shape == (2, 3)
    torch.testing.assert_close(
        out, torch.tensor([[-SQRT2_INV], [SQRT2_INV]]).expand(2, 3), rtol=1e-4, atol=1e-8
    )
    out = grpo_mean(one_col(*[0] * 10), torch.arange(10, dtype=torch.float32), torch.ones(10, 5))
    assert out.shape == (10, 5)
    assert abs(float(out.mean())) < 1e-5


@source(GRPO, 4231, "GRPOAdvantageEstimator")
def test_grpo_advantage_estimator_negative_advantages():
    """test_grpo.py::test_grpo_advantage_estimator_negative_advantages (line 4231)."""
    out = grpo_mean(one_col(0, 0, 0), torch.tensor([0.0, 2.0, 4.0]), torch.ones(3, 4))
    assert out[0, 0] < 0 and abs(float(out[1, 0])) < 1e-5 and out[2, 0] > 0
    torch.testing.assert_close(out[0], -out[2], rtol=1e-5, atol=0)


@source(GRPO, 4263, "GRPOAdvantageEstimator")
def test_grpo_advantage_estimator_zero_std_and_zero_advantage():
    """test_grpo.py::test_grpo_advantage_estimator_zero_std_and_zero_advantage (line 4263)."""
    out = grpo_mean(one_col(0, 0, 0, 0), torch.full((4,), 5.0), torch.ones(4, 3))
    assert torch.equal(out, torch.zeros(4, 3))


@source(GRPO, 4293, "GRPOAdvantageEstimator")
def test_grpo_advantage_estimator_small_nonzero_std():
    """test_grpo.py::test_grpo_advantage_estimator_small_nonzero_std (line 4293): no threshold on std."""
    out = grpo_mean(one_col(0, 0), torch.tensor([1.0, 1.01]), torch.ones(2, 3))
    for row in (0, 1):
        assert math.isclose(abs(float(out[row, 0])), SQRT2_INV, rel_tol=1e-3)
    assert out[0, 0] * out[1, 0] < 0


# --------------------------------------------------------------------------------------------------
# GDPOAdvantageEstimator (tests/unit/algorithms/test_grpo.py)
# --------------------------------------------------------------------------------------------------


@source(GRPO, 4333, "GDPOAdvantageEstimator")
def test_gdpo_advantage_estimator_multiple_rewards():
    """test_grpo.py::test_gdpo_advantage_estimator_multiple_rewards (line 4333)."""
    comps = {
        "reward/correctness": torch.tensor([1.0, 1.0]),
        "reward/integer": torch.tensor([1.0, -1.0]),
        "reward/format": torch.tensor([1.0, 0.0]),
    }
    out = gdpo_advantages(
        one_col(0, 0), comps, torch.ones(2, 3), normalize_rewards=True, use_leave_one_out_baseline=False
    )
    assert out.shape == (2, 3)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.7071, -0.7071]), rtol=1.3e-6, atol=1e-5)


@source(GRPO, 4356, "GDPOAdvantageEstimator")
def test_gdpo_advantage_estimator_single_reward():
    """test_grpo.py::test_gdpo_advantage_estimator_single_reward (line 4356): one component is refused."""
    with pytest.raises(ValueError, match="at least 2 reward components"):
        gdpo_advantages(
            one_col(0, 0),
            {"reward/correctness": torch.tensor([1.0, 3.0])},
            torch.ones(2, 3),
            normalize_rewards=True,
            use_leave_one_out_baseline=False,
        )


@source(GRPO, 4373, "GDPOAdvantageEstimator")
def test_gdpo_advantage_estimator_reward_weights():
    """test_grpo.py::test_gdpo_advantage_estimator_reward_weights (line 4373)."""
    comps = {
        "reward/correctness": torch.tensor([1.0, 0.0, 1.0]),
        "reward/format": torch.tensor([1.0, 1.0, 0.0]),
    }

    def run(weights):
        return gdpo_advantages(
            one_col(0, 0, 0),
            dict(comps),
            torch.ones(3, 2),
            normalize_rewards=True,
            use_leave_one_out_baseline=False,
            reward_weights=weights,
        )

    default = run(None)
    torch.testing.assert_close(default, run([2.0, 2.0]), atol=1e-5, rtol=0)  # uniform scale is undone
    assert not torch.allclose(default, run([1.0, 0.25]), atol=1e-3)
    with pytest.raises(ValueError, match="reward_weights has 1 entries"):
        run([1.0])


# --------------------------------------------------------------------------------------------------
# ReinforcePlusPlusAdvantageEstimator and _clip_grpo_advantages (tests/unit/algorithms/test_grpo.py)
# --------------------------------------------------------------------------------------------------


@source(GRPO, 4410, "ReinforcePlusPlusAdvantageEstimator")
def test_reinforce_plus_plus_global_normalization():
    """test_grpo.py::test_reinforce_plus_plus_global_normalization (line 4410).

    minus_baseline on, KL-in-reward off (its k2 / 1e-4 settings are then unused).
    """
    mask = torch.ones(4, 5)
    out = reinforce_plus_plus_advantages(
        one_col(0, 0, 0, 0),
        torch.tensor([0.0, 1.0, 2.0, 3.0]),
        mask,
        minus_baseline=True,
        use_kl_in_reward=False,
        reference_policy_kl_penalty=0.0001,
        reference_policy_kl_type="k2",
    )
    assert abs(float((out * mask).sum() / mask.sum())) < 1e-5
    assert out[0, 0] < out[1, 0] < out[2, 0] < out[3, 0]


@source(GRPO, 3409, "_clip_grpo_advantages")
def test_clip_grpo_advantages_respects_config_bounds():
    """test_grpo.py::test_clip_grpo_advantages_respects_config_bounds (line 3409)."""
    extreme = torch.tensor([[-10.0, 15.0], [0.0, 5.0]])
    clipped = clip_advantages(extreme.clone(), advantage_clip_low=-2.0, advantage_clip_high=3.0)
    assert clipped.min().item() == -2.0 and clipped.max().item() == 3.0
    assert torch.equal(clip_advantages(extreme.clone(), None, None), extreme)


# --------------------------------------------------------------------------------------------------
# GeneralizedAdvantageEstimator and RawRewardAdvantageEstimator (tests/unit/algorithms/test_ppo.py);
# NeMo's _make_gae_config defaults: gae_lambda 0.95, gae_gamma 1.0, normalize_advantages False
# --------------------------------------------------------------------------------------------------


@source(PPO, 85, "GeneralizedAdvantageEstimator")
def test_gae_basic_computation():
    """test_ppo.py::test_gae_basic_computation (line 85): returns = advantages + values.

    NeMo checks only that identity; with gamma = lambda = 1 the advantage is also the Monte Carlo
    return minus the value, 1 - 0.5 at every token, which is checked too.
    """
    values = torch.full((1, 4), 0.5)
    adv, ret = gae(torch.tensor([1.0]), torch.ones(1, 4), values, gae_lambda=1.0, gae_gamma=1.0)
    assert adv.shape == ret.shape == (1, 4)
    torch.testing.assert_close(ret, adv + values)
    torch.testing.assert_close(adv, torch.full((1, 4), 0.5))


@source(PPO, 115, "GeneralizedAdvantageEstimator")
def test_gae_gamma_lambda_zero():
    """test_ppo.py::test_gae_gamma_lambda_zero (line 115): lambda = 0 gives the one-step TD error."""
    adv, _ = gae(
        torch.tensor([5.0]), torch.ones(1, 3), torch.tensor([[1.0, 2.0, 3.0]]), gae_lambda=0.0, gae_gamma=1.0
    )
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0, 2.0]]))


@source(PPO, 146, "GeneralizedAdvantageEstimator")
def test_gae_shape_and_masking():
    """test_ppo.py::test_gae_shape_and_masking (line 146): padded positions get advantage 0."""
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    mask[2, 4:] = 0
    values = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    adv, ret = gae(torch.tensor([1.0, 2.0, 3.0]), mask, values, gae_lambda=0.95, gae_gamma=1.0)
    assert adv.shape == ret.shape == (3, 5)
    assert adv[1, 3:].abs().sum() == 0 and adv[2, 4:].abs().sum() == 0


@source(PPO, 177, "GeneralizedAdvantageEstimator")
def test_gae_normalize_advantages():
    """test_ppo.py::test_gae_normalize_advantages (line 177): whitened to mean 0, std 1 over valid tokens."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(8, generator=gen) * 5
    values = torch.randn(8, 10, generator=gen)
    adv, _ = gae(
        rewards, torch.ones(8, 10), values, gae_lambda=0.95, gae_gamma=1.0, normalize_advantages=True
    )
    assert abs(float(adv.mean())) < 0.1 and abs(float(adv.std()) - 1.0) < 0.2


@source(PPO, 206, "GeneralizedAdvantageEstimator")
def test_gae_kl_penalty_in_rewards():
    """test_ppo.py::test_gae_kl_penalty_in_rewards (line 206): k1 KL, beta 0.1, gamma = lambda = 1.

    Case 1: equal log-probs give KL 0, so the advantages equal the no-KL ones. Case 2: a divergent
    reference changes them. Case 3: with ``use_kl_in_reward=False`` the reference is ignored.
    (NeMo's call without log-probs and KL on skips the KL silently; rlref refuses it, so the no-KL
    baseline is computed with the switch off.)
    """
    rewards, mask, values = torch.tensor([1.0]), torch.ones(1, 3), torch.zeros(1, 3)
    logprobs = torch.tensor([[-1.0, -2.0, -1.5]])
    kl = dict(gae_lambda=1.0, gae_gamma=1.0, reference_policy_kl_penalty=0.1, reference_policy_kl_type="k1")
    adv_no_kl, _ = gae(rewards, mask, values, use_kl_in_reward=False, **kl)
    adv_kl_zero, _ = gae(
        rewards,
        mask,
        values,
        use_kl_in_reward=True,
        logprobs_policy=logprobs,
        logprobs_reference=logprobs.clone(),
        **kl,
    )
    torch.testing.assert_close(adv_kl_zero, adv_no_kl)
    divergent = torch.tensor([[-3.0, -4.0, -3.5]])
    adv_kl, _ = gae(
        rewards,
        mask,
        values,
        use_kl_in_reward=True,
        logprobs_policy=logprobs,
        logprobs_reference=divergent,
        **kl,
    )
    assert not torch.allclose(adv_kl, adv_no_kl)
    adv_off, _ = gae(
        rewards,
        mask,
        values,
        use_kl_in_reward=False,
        logprobs_policy=logprobs,
        logprobs_reference=divergent,
        **kl,
    )
    torch.testing.assert_close(adv_off, adv_no_kl)


@source(PPO, 275, "GeneralizedAdvantageEstimator")
def test_gae_vapo_decoupled_lambda():
    """test_ppo.py::test_gae_vapo_decoupled_lambda (line 275): lambda_value 1, lambda_policy 0.5."""
    values = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    adv, ret = gae(
        torch.tensor([1.0, 2.0]),
        torch.ones(2, 4),
        values,
        gae_lambda=0.95,
        gae_gamma=1.0,
        gae_lambda_value=1.0,
        gae_lambda_policy=0.5,
    )
    assert adv.shape == ret.shape == (2, 4)
    assert not torch.allclose(ret, adv + values, atol=1e-5)


@source(PPO, 309, "GeneralizedAdvantageEstimator")
def test_gae_length_adaptive_lambda():
    """test_ppo.py::test_gae_length_adaptive_lambda (line 309): alpha = 0.05, lengths 3 and 8.

    NeMo inspects the resolved per-row lambda 1 - 1/max(alpha l, 1), which clamps to 0 for both rows
    (alpha l < 1). rlref does not expose the lambda, so the case checks its consequence: with
    lambda_policy = 0 the advantages are the one-step TD errors, whatever gae_lambda says.
    """
    mask = torch.zeros(2, 10)
    mask[0, :3] = 1
    mask[1, :8] = 1
    gen = torch.Generator().manual_seed(0)
    values, rewards = torch.randn(2, 10, generator=gen), torch.randn(2, generator=gen)
    adv, _ = gae(rewards, mask, values, gae_lambda=0.95, gae_gamma=1.0, length_adaptive_alpha=0.05)
    td, _ = gae(rewards, mask, values, gae_lambda=0.0, gae_gamma=1.0)
    torch.testing.assert_close(adv, td)


@source(PPO, 334, "GeneralizedAdvantageEstimator")
def test_gae_carry_forward_interior_gap():
    """test_ppo.py::test_gae_carry_forward_interior_gap (line 334): a masked interior step is skipped."""
    kw = dict(gae_lambda=0.95, gae_gamma=0.99)
    gap_mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    adv_gap, _ = gae(torch.tensor([1.0]), gap_mask, torch.tensor([[0.1, 0.2, 999.0, 0.4, 0.5]]), **kw)
    adv, _ = gae(torch.tensor([1.0]), torch.ones(1, 4), torch.tensor([[0.1, 0.2, 0.4, 0.5]]), **kw)
    torch.testing.assert_close(adv_gap[0][gap_mask[0].bool()], adv[0])
    assert adv_gap[0, 2] == 0


@source(PPO, 382, "RawRewardAdvantageEstimator")
def test_raw_reward_basic_broadcast_and_masking():
    """test_ppo.py::test_raw_reward_basic_broadcast_and_masking (line 382).

    NeMo returns ``(advantages, None)``; rlref returns the advantages alone (there are no returns).
    """
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    out = raw_reward_advantages(torch.tensor([2.0, -1.0]), mask, normalize_advantages=False)
    torch.testing.assert_close(out, torch.tensor([[2.0] * 4, [-1.0] * 4]))


# --------------------------------------------------------------------------------------------------
# OPDAdvantageEstimator (tests/unit/algorithms/test_advantage_estimator.py) and the OPD set-up
# (tests/unit/algorithms/test_opd.py)
# --------------------------------------------------------------------------------------------------


@source(ADV, 24, "OPDAdvantageEstimator")
def test_opd_basic_positive_distill_advantage():
    """test_advantage_estimator.py::test_opd_basic_positive_distill_advantage (line 24)."""
    adv = opd_advantages(torch.ones(2, 4), torch.zeros(2, 4), torch.full((2, 4), -1.0))
    assert adv.shape == (2, 4) and (adv > 0).all()


@source(ADV, 42, "OPDAdvantageEstimator")
def test_opd_teacher_equals_student():
    """test_advantage_estimator.py::test_opd_teacher_equals_student (line 42)."""
    logprobs = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(opd_advantages(torch.ones(2, 4), logprobs, logprobs), torch.zeros(2, 4))


@source(ADV, 58, "OPDAdvantageEstimator")
def test_opd_mask_applied():
    """test_advantage_estimator.py::test_opd_mask_applied (line 58)."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    adv = opd_advantages(mask, torch.zeros(1, 6), torch.full((1, 6), -1.0))
    assert (adv[:, 3:] == 0).all() and (adv[:, :3] > 0).all()


@source(ADV, 78, "OPDAdvantageEstimator")
def test_opd_metrics_returned():
    """test_advantage_estimator.py::test_opd_metrics_returned (line 78): gap mean 1, adv mean 1, std 0."""
    m = opd_metrics(torch.ones(2, 4), torch.zeros(2, 4), torch.full((2, 4), -1.0))
    assert set(m) == {
        "on_policy_distillation/teacher_student_logprob_gap_mean",
        "on_policy_distillation/adv_mean",
        "on_policy_distillation/adv_std",
    }
    assert abs(m["on_policy_distillation/teacher_student_logprob_gap_mean"] - 1.0) < 1e-5
    assert abs(m["on_policy_distillation/adv_mean"] - 1.0) < 1e-5
    assert abs(m["on_policy_distillation/adv_std"]) < 1e-5


@source(OPD, 691, "OPDAdvantageEstimator")
def test_pad_teacher_logprobs():
    """test_opd.py::test_pad_teacher_logprobs (line 691): right zero-pad, unchanged, or refuse."""
    padded = pad_teacher_logprobs(torch.ones(2, 3), 5)
    assert padded.shape == (2, 5) and (padded[:, :3] == 1).all() and (padded[:, 3:] == 0).all()
    assert pad_teacher_logprobs(torch.ones(2, 4), 4).shape == (2, 4)
    with pytest.raises(ValueError, match="seq length"):
        pad_teacher_logprobs(torch.ones(2, 6), 4)


@source(OPD, 705, "OPDAdvantageEstimator")
def test_create_advantage_estimator_opd_branch():
    """test_opd.py::test_create_advantage_estimator_opd_branch (line 705).

    A ``loss_fn`` not configured as MOPD recommends gets three recommendations (NeMo: three
    warnings); the recommended configuration gets none.
    """
    assert len(opd_loss_fn_recommendations(False, False, "none")) == 3
    assert opd_loss_fn_recommendations(True, True, "icepop") == []


# --------------------------------------------------------------------------------------------------
# Bookkeeping: every test above names a NeMo RL source case, and the counts in the module docstring
# --------------------------------------------------------------------------------------------------

EXPECTED_COUNTS = {
    "calculate_baseline_and_std_per_prompt": 8,
    "GRPOAdvantageEstimator": 5,
    "GDPOAdvantageEstimator": 3,
    "ReinforcePlusPlusAdvantageEstimator": 1,
    "_clip_grpo_advantages": 1,
    "GeneralizedAdvantageEstimator": 8,
    "RawRewardAdvantageEstimator": 1,
    "OPDAdvantageEstimator": 6,
}


def test_every_case_cites_its_source_and_the_counts_match_the_docstring():
    module = sys.modules[__name__]
    cases = [f for name, f in vars(module).items() if name.startswith("test_") and hasattr(f, "nemo_source")]
    untagged = [
        name
        for name, f in vars(module).items()
        if name.startswith("test_")
        and callable(f)
        and not hasattr(f, "nemo_source")
        and name != "test_every_case_cites_its_source_and_the_counts_match_the_docstring"
    ]
    assert untagged == []
    counts: dict[str, int] = {}
    for f in cases:
        cite, _, cls = f.nemo_source
        assert cite.split("::")[1] in f.__doc__, f"{f.__name__}: docstring does not name {cite}"
        counts[cls] = counts.get(cls, 0) + 1
    assert counts == EXPECTED_COUNTS
