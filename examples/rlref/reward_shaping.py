"""Reward shaping by response length and truncation, written from the formulas NeMo RL implements.

NeMo RL shapes the total reward of every sampled response after ``scale_rewards`` and before the
advantage estimator, when ``grpo.reward_shaping.enabled`` (or ``ppo.reward_shaping.enabled``) is
true. Two mutually exclusive penalties exist:

* the **stop-properly penalty** (``stop_properly_penalty_coef`` set): a truncated response's reward
  is multiplied by the coefficient;
* otherwise the **DAPO overlong penalty**: a linear penalty for the part of the response beyond
  ``max_response_length - overlong_buffer_length`` tokens.

The reward before shaping is kept as ``unshaped_total_reward`` (DAPO dynamic sampling computes its
std from it; :func:`rlref.advantages.baseline_and_std_per_prompt` takes it as ``std_rewards``).

NeMo RL counterparts (commit 7ea279abf): ``RewardShapingConfig`` and ``apply_reward_shaping``
(nemo_rl/algorithms/reward_functions.py:24-47 and 50-172); config section ``grpo.reward_shaping``
(nemo_rl/algorithms/grpo.py:290, applied at 3028-3031) and ``ppo.reward_shaping``
(nemo_rl/algorithms/ppo.py:194, applied at 1451-1455); shipped defaults in
examples/configs/grpo_math_1B.yaml:30-35.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "RewardShaping",
    "apply_reward_shaping",
    "assistant_response_lengths",
    "dapo_overlong_penalty",
    "stop_properly_penalty",
]

_DAPO_KEYS = ("overlong_buffer_length", "overlong_buffer_penalty", "max_response_length")


class RewardShaping(NamedTuple):
    """Result of :func:`apply_reward_shaping`: NeMo RL's ``total_reward`` and ``unshaped_total_reward``."""

    total_reward: torch.Tensor
    unshaped_total_reward: torch.Tensor | None


def _rewards(rewards: object) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if not rewards.is_floating_point() or rewards.dim() != 1:
        raise ValueError(
            "rewards must be a floating 1-D [B] tensor, got dtype "
            f"{rewards.dtype}, shape {tuple(rewards.shape)}"
        )
    return rewards


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {type(value).__name__} {value!r}")
    return float(value)


def _lengths(response_lengths: object) -> torch.Tensor:
    if isinstance(response_lengths, torch.Tensor):
        lengths = response_lengths
    elif isinstance(response_lengths, Sequence) and not isinstance(response_lengths, (str, bytes)):
        lengths = torch.as_tensor(list(response_lengths))
    else:
        raise TypeError(
            f"response_lengths must be a [B] tensor or a list of ints, got {type(response_lengths).__name__}"
        )
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(
            f"response_lengths must be integer token counts, one per response, got dtype {lengths.dtype}, "
            f"shape {tuple(lengths.shape)}"
        )
    if (lengths < 0).any():
        raise ValueError(f"response_lengths must be >= 0, got {lengths.tolist()}")
    return lengths


def dapo_overlong_penalty(
    response_lengths: torch.Tensor | Sequence[int],
    max_response_length: int,
    overlong_buffer_length: int,
    overlong_buffer_penalty: float,
) -> torch.Tensor:
    """DAPO's soft overlong penalty ``[B]`` (float64), added to the reward.

    With ``L_exp = max_response_length - overlong_buffer_length`` and response length ``L``:
    ``penalty(L) = min(-(L - L_exp) / overlong_buffer_length * overlong_buffer_penalty, 0)``.
    Zero up to ``L_exp``, then linear, reaching ``-overlong_buffer_penalty`` at ``L = max_response_length``.
    There is **no floor**: beyond ``max_response_length`` the penalty keeps growing (the DAPO paper
    caps it at ``-1``).

    NeMo RL: ``apply_reward_shaping`` (nemo_rl/algorithms/reward_functions.py:132, 160-167); config
    ``grpo.reward_shaping.{max_response_length, overlong_buffer_length, overlong_buffer_penalty}``
    (shipped: ``${policy.max_total_sequence_length}``, 128, 1).
    """
    lengths = _lengths(response_lengths)
    max_len = _int("max_response_length", max_response_length, 1)
    buffer = _int("overlong_buffer_length", overlong_buffer_length, 1)
    penalty = _number("overlong_buffer_penalty", overlong_buffer_penalty)
    if penalty < 0:
        raise ValueError(f"overlong_buffer_penalty must be >= 0, got {overlong_buffer_penalty!r}")
    if buffer > max_len:
        raise ValueError(f"overlong_buffer_length ({buffer}) must be <= max_response_length ({max_len})")
    exceed = lengths.to(torch.float64) - (max_len - buffer)
    return torch.clamp(-exceed / buffer * penalty, max=0.0) + 0.0  # + 0.0 turns -0.0 into 0.0


def stop_properly_penalty(
    rewards: torch.Tensor, truncated: torch.Tensor | Sequence[bool], stop_properly_penalty_coef: float
) -> torch.Tensor:
    """``r'_i = c * r_i`` if response ``i`` was truncated, else ``r_i`` (``c`` in [0, 1]).

    ``c = 0`` zeroes a truncated response's reward, ``c = 1`` changes nothing. The penalty is a
    *scale*: a truncated response with reward 0 (or negative) is not pushed down by it.

    NeMo RL: ``apply_reward_shaping`` (nemo_rl/algorithms/reward_functions.py:66-115); config
    ``grpo.reward_shaping.stop_properly_penalty_coef`` (shipped null: off). NeMo checks the range
    with ``assert``; here it is a ``ValueError``.
    """
    rewards = _rewards(rewards)
    coef = _number("stop_properly_penalty_coef", stop_properly_penalty_coef)
    if not 0.0 <= coef <= 1.0:
        raise ValueError(f"stop_properly_penalty_coef must be in [0, 1], got {stop_properly_penalty_coef!r}")
    if isinstance(truncated, torch.Tensor):
        flags = truncated.to(device=rewards.device)
    else:
        flags = torch.as_tensor(list(truncated), dtype=torch.bool, device=rewards.device)
    if flags.dtype != torch.bool or flags.shape != rewards.shape:
        raise ValueError(
            f"truncated must be a bool [B] = {tuple(rewards.shape)} flag per response, got dtype "
            f"{flags.dtype}, shape {tuple(flags.shape)}"
        )
    return torch.where(flags, rewards * coef, rewards)


def assistant_response_lengths(message_logs: Sequence[Sequence[dict]]) -> list[int]:
    """Token count of the **first** assistant message of each conversation.

    A multi-turn conversation is measured by its first assistant turn only. A conversation without
    an assistant message is an error.

    NeMo RL: the fallback of ``apply_reward_shaping`` when the batch has no ``response_token_lengths``
    (nemo_rl/algorithms/reward_functions.py:137-154).
    """
    out = []
    for i, log in enumerate(message_logs):
        length = next((len(m["token_ids"]) for m in log if m.get("role") == "assistant"), None)
        if length is None:
            raise ValueError(f"message_logs[{i}] has no assistant response to measure")
        out.append(int(length))
    return out


def apply_reward_shaping(
    rewards: torch.Tensor,
    *,
    enabled: bool = False,
    response_lengths: torch.Tensor | Sequence[int] | None = None,
    truncated: torch.Tensor | Sequence[bool] | None = None,
    overlong_buffer_length: int | None = None,
    overlong_buffer_penalty: float | None = None,
    max_response_length: int | None = None,
    stop_properly_penalty_coef: float | None = None,
) -> RewardShaping:
    """NeMo RL's shaping step: returns ``(total_reward, unshaped_total_reward)``.

    * ``enabled=False``: ``(rewards, None)``, the same tensor, nothing saved.
    * ``stop_properly_penalty_coef`` set: :func:`stop_properly_penalty` (needs ``truncated``); the
      three DAPO keys are ignored, with a ``UserWarning`` naming those that are set.
    * otherwise ``rewards + dapo_overlong_penalty(...)``; all three DAPO keys and
      ``response_lengths`` (one per reward) are required.

    ``unshaped_total_reward`` is a copy of ``rewards`` whenever shaping is enabled.

    NeMo RL: ``apply_reward_shaping`` (nemo_rl/algorithms/reward_functions.py:50-172) on a batch with
    ``total_reward``, ``truncated`` and ``response_token_lengths``; keys of ``RewardShapingConfig``
    (lines 24-47). NeMo asserts where this raises ``ValueError`` (missing ``truncated``, bad
    coefficient, length mismatch).
    """
    rewards = _rewards(rewards)
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    if not enabled:
        return RewardShaping(rewards, None)
    unshaped = rewards.clone()
    if stop_properly_penalty_coef is not None:
        given = [
            k
            for k, v in zip(
                _DAPO_KEYS,
                (overlong_buffer_length, overlong_buffer_penalty, max_response_length),
                strict=True,
            )
            if v is not None
        ]
        if given:
            warnings.warn(
                f"stop_properly_penalty_coef is set, so the DAPO overlong keys {given} are ignored",
                UserWarning,
                stacklevel=2,
            )
        if truncated is None:
            raise ValueError("stop_properly_penalty_coef needs truncated (a bool flag per response)")
        return RewardShaping(stop_properly_penalty(rewards, truncated, stop_properly_penalty_coef), unshaped)
    missing = [
        k
        for k, v in zip(
            _DAPO_KEYS, (overlong_buffer_length, overlong_buffer_penalty, max_response_length), strict=True
        )
        if v is None
    ]
    if missing:
        raise ValueError(
            f"reward shaping is enabled but DAPO reward shaping needs {list(_DAPO_KEYS)}; missing {missing} "
            "(or set stop_properly_penalty_coef)"
        )
    if response_lengths is None:
        raise ValueError("DAPO overlong shaping needs response_lengths (tokens per response)")
    lengths = _lengths(response_lengths)
    if lengths.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"response_lengths has {lengths.shape[0]} entries but rewards has {rewards.shape[0]}"
        )
    penalty = dapo_overlong_penalty(
        lengths, max_response_length, overlong_buffer_length, overlong_buffer_penalty
    )
    return RewardShaping((rewards.to(torch.float64) + penalty.to(rewards.device)).to(rewards.dtype), unshaped)
