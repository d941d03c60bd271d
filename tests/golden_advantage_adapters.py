"""Golden-case adapters for the advantage estimators and reward scaling.

``ADVANTAGE_ADAPTERS[function](case)`` runs one golden case (``tests/golden/adv_*.json``, layout in
``tests/golden/SCHEMA.md`` section 7) through ``rlref.advantages`` and returns a dict with exactly the
output names of ``case["outputs"]``. ``tests/test_golden_parity.py`` compares them with NeMo RL's
recorded values.

An adapter raises ``ValueError`` for a config key or input it does not understand and
for a config value it cannot honour, so a case is never reproduced partially.
"""

from __future__ import annotations

from collections.abc import Callable

from golden_cases import case_tensors

from rlref.advantages import (
    baseline_and_std_per_prompt,
    clip_advantages,
    gae_advantages,
    gdpo_advantages,
    grpo_advantages,
    raw_reward_advantages,
    reinforce_plus_plus_advantages,
    scale_rewards,
)

__all__ = ["ADVANTAGE_ADAPTERS", "case_tensors"]

def _section(config: dict, name: str, allowed: set[str], case: dict) -> dict:
    """``config[name]`` after checking every key is understood."""
    if name not in config:
        raise ValueError(f"{case.get('case_id')}: config has no {name!r} section")
    section = config[name]
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(f"{case.get('case_id')}: config keys {name}.{unknown} are not understood")
    return section


def _top_level(case: dict, allowed: set[str]) -> dict:
    config = case["config"]
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{case.get('case_id')}: config keys {unknown} are not understood")
    return config


def _expect_name(section: dict, name: str, case: dict) -> None:
    if section.get("name", name) != name:
        raise ValueError(
            f"{case.get('case_id')}: adv_estimator.name is {section['name']!r}, expected {name!r}"
        )


_COMMON_INPUTS = {"prompt_ids", "rewards", "mask"}
_LOSS_FN_KL_KEYS = {"use_kl_in_reward", "reference_policy_kl_penalty", "reference_policy_kl_type"}


def adapt_baseline_and_std(case: dict) -> dict:
    config = _top_level(case, {"leave_one_out_baseline"})
    x = case_tensors(case, _COMMON_INPUTS | {"valid_mask", "std_rewards"})
    baseline, std = baseline_and_std_per_prompt(
        x["prompt_ids"],
        x["rewards"],
        valid_mask=x.get("valid_mask"),
        leave_one_out_baseline=config["leave_one_out_baseline"],
        std_rewards=x.get("std_rewards"),
    )
    return {"baseline": baseline, "std": std}


def adapt_grpo(case: dict) -> dict:
    config = _top_level(case, {"adv_estimator", "advantage_clip_low", "advantage_clip_high"})
    est = _section(config, "adv_estimator", {"name", "normalize_rewards", "use_leave_one_out_baseline"}, case)
    _expect_name(est, "grpo", case)
    x = case_tensors(case, _COMMON_INPUTS)
    loo = est.get("use_leave_one_out_baseline", True)
    advantages = grpo_advantages(
        x["prompt_ids"],
        x["rewards"],
        x["mask"],
        normalize_rewards=est.get("normalize_rewards", True),
        use_leave_one_out_baseline=loo,
    )
    baseline, std = baseline_and_std_per_prompt(x["prompt_ids"], x["rewards"], leave_one_out_baseline=loo)
    clipped = clip_advantages(
        advantages,
        advantage_clip_low=config.get("advantage_clip_low"),
        advantage_clip_high=config.get("advantage_clip_high"),
    )
    return {"advantages": advantages, "advantages_clipped": clipped, "baseline": baseline, "std": std}


def adapt_gdpo(case: dict) -> dict:
    config = _top_level(case, {"adv_estimator"})
    est = _section(
        config,
        "adv_estimator",
        {"name", "normalize_rewards", "use_leave_one_out_baseline", "reward_weights"},
        case,
    )
    _expect_name(est, "gdpo", case)
    x = case_tensors(case, _COMMON_INPUTS | {"reward_components"})
    advantages = gdpo_advantages(
        x["prompt_ids"],
        x["reward_components"],
        x["mask"],
        normalize_rewards=est.get("normalize_rewards", True),
        use_leave_one_out_baseline=est.get("use_leave_one_out_baseline", True),
        reward_weights=est.get("reward_weights"),
    )
    return {"advantages": advantages}


def adapt_reinforce_plus_plus(case: dict) -> dict:
    config = _top_level(case, {"adv_estimator", "loss_fn"})
    est = _section(config, "adv_estimator", {"name", "minus_baseline"}, case)
    _expect_name(est, "reinforce_plus_plus", case)
    loss_fn = _section(config, "loss_fn", _LOSS_FN_KL_KEYS, case)
    x = case_tensors(case, _COMMON_INPUTS | {"logprobs_policy", "logprobs_reference"})
    advantages = reinforce_plus_plus_advantages(
        x["prompt_ids"],
        x["rewards"],
        x["mask"],
        minus_baseline=est.get("minus_baseline", True),
        logprobs_policy=x.get("logprobs_policy"),
        logprobs_reference=x.get("logprobs_reference"),
        **loss_fn,
    )
    return {"advantages": advantages}


def adapt_raw_reward(case: dict) -> dict:
    config = _top_level(case, {"adv_estimator"})
    est = _section(config, "adv_estimator", {"name", "normalize_advantages"}, case)
    _expect_name(est, "raw_reward", case)
    x = case_tensors(case, _COMMON_INPUTS)  # prompt_ids is recorded but unused by this estimator
    advantages = raw_reward_advantages(
        x["rewards"], x["mask"], normalize_advantages=est.get("normalize_advantages", True)
    )
    return {"advantages": advantages}


_GAE_KEYS = {
    "name",
    "gae_lambda",
    "gae_gamma",
    "normalize_advantages",
    "gae_lambda_value",
    "gae_lambda_policy",
    "length_adaptive_alpha",
}


def adapt_gae(case: dict) -> dict:
    config = _top_level(case, {"adv_estimator", "loss_fn"})
    est = dict(_section(config, "adv_estimator", _GAE_KEYS, case))
    _expect_name(est, "gae", case)
    est.pop("name", None)
    loss_fn = _section(config, "loss_fn", _LOSS_FN_KL_KEYS, case)
    x = case_tensors(case, _COMMON_INPUTS | {"values", "logprobs_policy", "logprobs_reference"})
    advantages, returns = gae_advantages(
        x["rewards"],
        x["mask"],
        x["values"],
        logprobs_policy=x.get("logprobs_policy"),
        logprobs_reference=x.get("logprobs_reference"),
        **est,
        **loss_fn,
    )
    return {"advantages": advantages, "returns": returns}


def adapt_scale_rewards(case: dict) -> dict:
    config = _top_level(case, {"reward_scaling"})
    scaling = dict(
        _section(
            config,
            "reward_scaling",
            {"enabled", "source_min", "source_max", "target_min", "target_max"},
            case,
        )
    )
    enabled = scaling.pop("enabled", False)
    x = case_tensors(case, _COMMON_INPUTS | {"reward_components"})
    batch = {"total_reward": x["rewards"], **(x.get("reward_components") or {})}
    if not enabled:
        return {k: v.clone() for k, v in batch.items()}
    return {k: scale_rewards(v, **scaling) for k, v in batch.items()}


ADVANTAGE_ADAPTERS: dict[str, Callable[[dict], dict]] = {
    "calculate_baseline_and_std_per_prompt": adapt_baseline_and_std,
    "GRPOAdvantageEstimator": adapt_grpo,
    "GDPOAdvantageEstimator": adapt_gdpo,
    "ReinforcePlusPlusAdvantageEstimator": adapt_reinforce_plus_plus,
    "RawRewardAdvantageEstimator": adapt_raw_reward,
    "GeneralizedAdvantageEstimator": adapt_gae,
    "scale_rewards": adapt_scale_rewards,
}
