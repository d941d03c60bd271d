"""rlref.reward_shaping (and rlref.advantages.scale_rewards) against NeMo RL's own test cases.

Every test named after a NeMo RL test is that case re-expressed for rlref's functions; its docstring
cites ``tests/unit/algorithms/<file>::<test>`` and the line of the ``def`` at commit 7ea279abf.
NeMo RL's tests build a batch with ``create_mock_batch_with_responses`` (one user and one assistant
message per sample, the assistant message holding ``response_lengths[i]`` tokens); here the lengths
are passed directly. NeMo raises ``AssertionError`` in several error cases; rlref raises
``ValueError``. The tests after the ported ones check the formulas by hand and the validation.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from rlref.advantages import baseline_and_std_per_prompt, scale_rewards
from rlref.reward_shaping import (
    apply_reward_shaping,
    assistant_response_lengths,
    dapo_overlong_penalty,
    stop_properly_penalty,
)

SRC = "tests/unit/algorithms/test_reward_functions.py"

# NeMo's test config: max_response_length 25, overlong_buffer_length 5, so the penalty starts at 20.
DAPO = dict(overlong_buffer_length=5, max_response_length=25)


def shape(rewards, lengths, **kw):
    return apply_reward_shaping(torch.tensor(rewards), response_lengths=lengths, **kw)


# --------------------------------------------------------------------------------------------------
# scale_rewards (NeMo RL: nemo_rl/algorithms/grpo.py:1831-1874)
# --------------------------------------------------------------------------------------------------


def test_reward_scaling_disabled():
    """test_reward_functions.py::test_reward_scaling_disabled (line 28).

    rlref has no ``enabled`` switch (not calling ``scale_rewards`` is "disabled"); its default
    ranges [0, 1] -> [0, 1] leave rewards in [0, 1] unchanged, the same outcome.
    """
    rewards = torch.tensor([1.0, 0.5, 0.8])
    torch.testing.assert_close(scale_rewards(rewards), rewards)


def test_reward_scaling_base():
    """test_reward_functions.py::test_reward_scaling_base (line 41): [0, 1] -> [0, 0.7]."""
    out = scale_rewards(torch.tensor([1.0, 0.5, 0.8]), 0.0, 1.0, 0.0, 0.7)
    torch.testing.assert_close(out, torch.tensor([0.7, 0.35, 0.56]))


def test_reward_scaling_dapo():
    """test_reward_functions.py::test_reward_scaling_dapo (line 62): binary 0/1 -> -1/1."""
    out = scale_rewards(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0]), 0.0, 1.0, -1.0, 1.0)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0]))


def test_reward_scaling_clipping():
    """test_reward_functions.py::test_reward_scaling_clipping (line 81): clamp to [-2, 2], map to [-1, 1]."""
    out = scale_rewards(torch.tensor([-2.8, -0.25, 1.5, 0.5, 2.0, 2.5]), -2.0, 2.0, -1.0, 1.0)
    torch.testing.assert_close(out, torch.tensor([-1.0, -0.125, 0.75, 0.25, 1.0, 1.0]))


# --------------------------------------------------------------------------------------------------
# apply_reward_shaping (NeMo RL: nemo_rl/algorithms/reward_functions.py:50-172)
# --------------------------------------------------------------------------------------------------


def test_reward_shaping_disabled():
    """test_reward_functions.py::test_reward_shaping_disabled (line 108): same tensor back."""
    rewards = torch.tensor([1.0, 0.5, 0.8])
    out = apply_reward_shaping(
        rewards, enabled=False, response_lengths=[10, 20, 30], overlong_buffer_penalty=0.1, **DAPO
    )
    assert out.total_reward is rewards


def test_reward_shaping_no_penalties():
    """test_reward_functions.py::test_reward_shaping_no_penalties (line 133): all lengths <= 20."""
    out = shape([1.0, 0.5, 0.8], [10, 15, 18], enabled=True, overlong_buffer_penalty=1.0, **DAPO)
    torch.testing.assert_close(out.total_reward, torch.tensor([1.0, 0.5, 0.8]))


def test_reward_shaping_with_penalties():
    """test_reward_functions.py::test_reward_shaping_with_penalties (line 159).

    Lengths 10, 22, 25, 30 with penalty 0.5: 0, -0.2, -0.5, and -1.0 for the response five tokens
    past max_response_length (no floor at -0.5).
    """
    out = shape([1.0, 0.8, 0.6, 0.4], [10, 22, 25, 30], enabled=True, overlong_buffer_penalty=0.5, **DAPO)
    torch.testing.assert_close(out.total_reward, torch.tensor([1.0, 0.6, 0.1, -0.6]), atol=1e-6, rtol=0)


def test_reward_shaping_preserves_unshaped_reward_overlong():
    """test_reward_functions.py::test_reward_shaping_preserves_unshaped_reward_overlong (line 189)."""
    raw = [0.0, 0.0, 0.0, 0.0]
    out = shape(raw, [10, 22, 25, 30], enabled=True, overlong_buffer_penalty=0.5, **DAPO)
    torch.testing.assert_close(out.total_reward, torch.tensor([0.0, -0.2, -0.5, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.unshaped_total_reward, torch.tensor(raw))
    assert out.unshaped_total_reward.data_ptr() != out.total_reward.data_ptr()


def test_reward_shaping_preserves_unshaped_reward_stop_properly():
    """test_reward_functions.py::test_reward_shaping_preserves_unshaped_reward_stop_properly (line 227)."""
    raw = [1.0, 0.8, 0.6, 0.4]
    out = apply_reward_shaping(
        torch.tensor(raw),
        enabled=True,
        truncated=torch.tensor([False, True, False, True]),
        stop_properly_penalty_coef=0.5,
    )
    torch.testing.assert_close(out.unshaped_total_reward, torch.tensor(raw))


def test_reward_shaping_disabled_does_not_save_unshaped_reward():
    """test_reward_functions.py::test_reward_shaping_disabled_does_not_save_unshaped_reward (line 246)."""
    out = shape([1.0, 0.5, 0.8], [10, 20, 30], enabled=False, overlong_buffer_penalty=0.1, **DAPO)
    assert out.unshaped_total_reward is None


def test_reward_shaping_optional_defaults_are_none():
    """test_reward_functions.py::test_reward_shaping_optional_defaults_are_none (line 263)."""
    params = inspect.signature(apply_reward_shaping).parameters
    for key in (
        "overlong_buffer_length",
        "overlong_buffer_penalty",
        "max_response_length",
        "stop_properly_penalty_coef",
    ):
        assert params[key].default is None
    assert params["enabled"].default is False


def test_reward_shaping_missing_config_values():
    """test_reward_functions.py::test_reward_shaping_missing_config_values (line 272)."""
    full = dict(overlong_buffer_length=5, overlong_buffer_penalty=0.1, max_response_length=25)
    for key in full:
        cfg = {**full, key: None}
        with pytest.raises(ValueError, match=f"DAPO reward shaping needs .*missing \\['{key}'\\]"):
            shape([1.0], [20], enabled=True, **cfg)


def test_reward_shaping_missing_assistant_response():
    """test_reward_functions.py::test_reward_shaping_missing_assistant_response (line 300)."""
    logs = [[{"role": "user", "content": "Question", "token_ids": torch.tensor([1, 2, 3])}]]
    with pytest.raises(ValueError, match=r"message_logs\[0\] has no assistant response"):
        assistant_response_lengths(logs)


def test_reward_shaping_mismatched_lengths():
    """test_reward_functions.py::test_reward_shaping_mismatched_lengths (line 330): 3 rewards, 2 lengths."""
    with pytest.raises(ValueError, match="response_lengths has 2 entries but rewards has 3"):
        shape([1.0, 0.5, 0.3], [10, 20], enabled=True, overlong_buffer_penalty=0.1, **DAPO)


def test_stop_properly_penalty():
    """test_reward_functions.py::test_stop_properly_penalty (line 356): no warning, truncated x 0.5."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = apply_reward_shaping(
            torch.tensor([1.0, 0.8, 0.6, 0.4]),
            enabled=True,
            truncated=torch.tensor([False, True, False, True]),
            stop_properly_penalty_coef=0.5,
        )
    torch.testing.assert_close(out.total_reward, torch.tensor([1.0, 0.4, 0.6, 0.2]), atol=1e-6, rtol=0)


def test_stop_properly_penalty_boundary_coefs():
    """test_reward_functions.py::test_stop_properly_penalty_boundary_coefs (line 374): c = 0 and c = 1."""
    rewards, truncated = torch.tensor([1.0, 0.5]), torch.tensor([True, True])
    torch.testing.assert_close(stop_properly_penalty(rewards, truncated, 0.0), torch.zeros(2))
    torch.testing.assert_close(stop_properly_penalty(rewards, truncated, 1.0), rewards)


def test_stop_properly_penalty_error_cases():
    """test_reward_functions.py::test_stop_properly_penalty_error_cases (line 393)."""
    rewards = torch.tensor([1.0, 0.5])
    with pytest.raises(ValueError, match="needs truncated"):
        apply_reward_shaping(rewards, enabled=True, stop_properly_penalty_coef=0.5)
    for coef in (-0.1, 1.5):
        with pytest.raises(ValueError, match="stop_properly_penalty_coef must be in"):
            apply_reward_shaping(
                rewards, enabled=True, truncated=torch.tensor([False, True]), stop_properly_penalty_coef=coef
            )


def test_dapo_dynamic_sampling_filters_on_raw_metric_after_overlong_shaping():
    """test_grpo.py::test_dapo_dynamic_sampling_filters_on_raw_metric_after_overlong_shaping (line 2075).

    The shaping and std part: group 0 is all wrong (reward 0) with lengths 10, 22, 30, so shaping
    gives it a non-zero std; the std taken from the unshaped reward (``std_rewards``) is 0 there
    and non-zero for the mixed group 1. (Which rows ``dynamic_sampling`` then keeps is NeMo's loop.)
    """
    out = shape(
        [0.0, 0.0, 0.0, 1.0, 0.0, 1.0],
        [10, 22, 30, 10, 20, 10],
        enabled=True,
        overlong_buffer_penalty=0.5,
        **DAPO,
    )
    torch.testing.assert_close(out.total_reward[:3], torch.tensor([0.0, -0.2, -1.0]), atol=1e-6, rtol=0)
    assert out.total_reward[:3].std(unbiased=False) > 0
    prompts = torch.tensor([[100, 101, 102]] * 3 + [[101, 101, 102]] * 3)
    _, raw_std = baseline_and_std_per_prompt(
        prompts, out.total_reward, leave_one_out_baseline=False, std_rewards=out.unshaped_total_reward
    )
    torch.testing.assert_close(raw_std[:3], torch.zeros(3))
    assert (raw_std[3:] > 0).all()


# --------------------------------------------------------------------------------------------------
# By hand and validation (rlref's own)
# --------------------------------------------------------------------------------------------------


def test_overlong_penalty_is_zero_then_linear_without_floor():
    pen = dapo_overlong_penalty([0, 96, 100, 112, 128, 160], 128, 32, 1.0)
    torch.testing.assert_close(pen, torch.tensor([0.0, 0.0, -0.125, -0.5, -1.0, -2.0], dtype=torch.float64))
    assert torch.equal(dapo_overlong_penalty([200], 128, 32, 0.0), torch.zeros(1, dtype=torch.float64))


def test_stop_properly_penalty_scales_but_does_not_lower_a_zero_or_negative_reward_below_itself():
    out = stop_properly_penalty(torch.tensor([0.0, -1.0, 2.0]), [True, True, True], 0.5)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.5, 1.0]))


def test_stop_properly_warns_about_ignored_dapo_keys_and_keeps_the_dtype():
    with pytest.warns(UserWarning, match=r"\['overlong_buffer_length', 'max_response_length'\] are ignored"):
        out = apply_reward_shaping(
            torch.tensor([1.0, 1.0], dtype=torch.float64),
            enabled=True,
            truncated=[True, False],
            stop_properly_penalty_coef=0.25,
            overlong_buffer_length=5,
            max_response_length=25,
        )
    assert out.total_reward.dtype == torch.float64
    torch.testing.assert_close(out.total_reward, torch.tensor([0.25, 1.0], dtype=torch.float64))


def test_validation():
    with pytest.raises(TypeError, match="rewards must be a torch.Tensor"):
        apply_reward_shaping([1.0], enabled=True)
    with pytest.raises(ValueError, match="rewards must be a floating 1-D"):
        apply_reward_shaping(torch.tensor([1, 0]), enabled=True)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        apply_reward_shaping(torch.tensor([1.0]), enabled=1)
    with pytest.raises(ValueError, match="needs response_lengths"):
        apply_reward_shaping(torch.tensor([1.0]), enabled=True, overlong_buffer_penalty=1.0, **DAPO)
    with pytest.raises(ValueError, match="overlong_buffer_penalty must be >= 0"):
        dapo_overlong_penalty([1], 25, 5, -0.5)
    with pytest.raises(ValueError, match="overlong_buffer_length must be >= 1"):
        dapo_overlong_penalty([1], 25, 0, 1.0)
    with pytest.raises(ValueError, match=r"overlong_buffer_length \(30\) must be <= max_response_length"):
        dapo_overlong_penalty([1], 25, 30, 1.0)
    with pytest.raises(TypeError, match="max_response_length must be an int"):
        dapo_overlong_penalty([1], 25.0, 5, 1.0)
    with pytest.raises(ValueError, match="response_lengths must be integer token counts"):
        dapo_overlong_penalty(torch.tensor([1.5]), 25, 5, 1.0)
    with pytest.raises(ValueError, match="response_lengths must be >= 0"):
        dapo_overlong_penalty([-1], 25, 5, 1.0)
    with pytest.raises(TypeError, match="response_lengths must be a"):
        dapo_overlong_penalty("12", 25, 5, 1.0)
    with pytest.raises(ValueError, match=r"truncated must be a bool \[B\]"):
        stop_properly_penalty(torch.tensor([1.0, 2.0]), torch.tensor([1, 0]), 0.5)
    with pytest.raises(TypeError, match="stop_properly_penalty_coef must be a finite number"):
        stop_properly_penalty(torch.tensor([1.0]), [True], float("nan"))
    assert assistant_response_lengths(
        [
            [
                {"role": "user", "token_ids": [1]},
                {"role": "assistant", "token_ids": [1, 2]},
                {"role": "assistant", "token_ids": [1, 2, 3]},
            ]
        ]
    ) == [2]
