"""Multi-objective rewards: weighted scalarisation and a dynamic weight balancer for the lab.

NeMo RL sums an environment's ``reward/<name>`` components **unweighted** into the total reward
(nemo_rl/experience/rollouts.py:960-975). Its only built-in weights are GDPO's
``grpo.adv_estimator.reward_weights``, which weight per-component *advantages*
(nemo_rl/algorithms/advantage_estimator.py:143-182; :func:`rlref.advantages.gdpo_advantages`).
Weighting the rewards themselves, or changing weights during training, is user code. This module
holds that user code for the lab:

    :func:`weighted_sum` the scalarisation ``r = sum_k w_k r_k``;
    :class:`WeightedRewardTask` a task whose components come out already weighted (in NeMo RL: an
        environment whose ``step()`` scales the components of its ``rewards`` dict);
    :class:`ComponentLog` a ``grpo_train`` callback recording each step's *unweighted* component
        means and the weights that produced them;
    :class:`TargetWeightBalancer` a ``ComponentLog`` that also moves one weight each step so that
        a guarded metric tracks a target (NeMo RL has no built-in dynamic weight balancing).

Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from rlref.lab.tasks import Problem, Task

__all__ = ["weighted_sum", "WeightedRewardTask", "ComponentLog", "TargetWeightBalancer"]


def _check_weights(weights, names: Sequence[str]) -> dict[str, float]:
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a dict component name -> float, got {type(weights).__name__}")
    missing = [n for n in names if n not in weights]
    extra = [n for n in weights if n not in names]
    if missing or extra:
        raise ValueError(f"weights must name exactly the components {list(names)}; "
                         f"missing {missing}, unknown {extra}")
    out = {}
    for n in names:
        w = weights[n]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{n!r}] must be a finite number >= 0, got {w!r}")
        out[n] = float(w)
    return out


def weighted_sum(components: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Weighted scalarisation of reward components: ``r = sum_k w_k r_k`` (``[B]`` tensors).

    ``weights`` must name exactly the keys of ``components``, each a finite number >= 0. All
    weights 1 is NeMo RL's unweighted sum (nemo_rl/experience/rollouts.py:960-975).
    """
    if not isinstance(components, Mapping) or not components:
        raise ValueError("components must be a non-empty dict name -> [B] tensor")
    names = sorted(components)
    w = _check_weights(weights, names)
    rows = []
    for n in names:
        v = components[n]
        if not isinstance(v, torch.Tensor) or v.ndim != 1:
            raise ValueError(f"components[{n!r}] must be a 1-D tensor, got {getattr(v, 'shape', type(v))}")
        rows.append(v)
    if len({r.shape[0] for r in rows}) != 1:
        raise ValueError(f"components have different lengths: {[r.shape[0] for r in rows]}")
    return sum(w[n] * r for n, r in zip(names, rows, strict=True))


class WeightedRewardTask(Task):
    """A lab task whose reward components are scaled by ``weights`` before the lab sums them.

    ``rewards(problem, response)`` returns ``{k: w_k * r_k}``, so the lab's unweighted total is the
    weighted scalarisation :func:`weighted_sum`. The unweighted values are accumulated too:
    :meth:`take_raw_means` returns their means since its last call. ``set_weights`` changes the
    weights for the responses scored next.

    NeMo RL counterpart: a custom environment (``EnvironmentInterface.step``) that scales the
    components of the ``rewards`` dict it returns; NeMo RL then sums them unweighted.
    """

    def __init__(self, base: Task, weights: Mapping[str, float]) -> None:
        if not isinstance(base, Task) or isinstance(base, WeightedRewardTask):
            raise TypeError(f"base must be a lab Task from make_task, got {type(base).__name__}")
        self.base = base
        self.name, self.marker = base.name, base.marker
        self.difficulty = base.difficulty
        self.reward_components = base.reward_components
        self.extra_tokens = base.extra_tokens
        self.held_out_fraction = base.held_out_fraction
        self.weights = _check_weights(weights, self.reward_components)
        self._raw_sum = dict.fromkeys(self.reward_components, 0.0)
        self._raw_count = 0

    def __repr__(self) -> str:
        return f"WeightedRewardTask({self.base!r}, weights={self.weights})"

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the weights (same component names, each finite and >= 0)."""
        self.weights = _check_weights(weights, self.reward_components)

    def sample_prompts(self, n: int, generator: torch.Generator | None = None,
                       split: str = "train") -> list[Problem]:
        """The base task's draw (training prompts unless ``split="held_out"``), scored by this task."""
        problems = self.base.sample_prompts(n, generator, split=split)
        return [dataclasses.replace(p, task=self) for p in problems]

    def is_held_out(self, problem: Problem) -> bool:
        return self.base.is_held_out(problem)

    @property
    def prompt_length(self) -> int:
        return self.base.prompt_length

    @property
    def max_new_tokens(self) -> int:
        return self.base.max_new_tokens

    def is_correct(self, problem: Problem, content: list[int]) -> bool:
        return self.base.is_correct(problem, content)

    def rewards(self, problem: Problem, response: Sequence[int]) -> dict[str, float]:
        raw = self.base.rewards(problem, response)
        for k, v in raw.items():
            self._raw_sum[k] += v
        self._raw_count += 1
        return {k: self.weights[k] * v for k, v in raw.items()}

    def take_raw_means(self) -> dict[str, float]:
        """Mean of each *unweighted* component over the responses scored since the last call."""
        if self._raw_count == 0:
            raise RuntimeError("no responses were scored since the last take_raw_means() call")
        out = {k: s / self._raw_count for k, s in self._raw_sum.items()}
        self._raw_sum = dict.fromkeys(self.reward_components, 0.0)
        self._raw_count = 0
        return out


class ComponentLog:
    """A ``grpo_train`` callback that records, per step, the unweighted component means and weights.

    ``rows[t]`` is ``{"raw/<component>": mean, "weight/<component>": w}`` for step ``t`` (the
    weights that scored that step). ``series(key)`` gives one key over steps. NeMo RL does not log
    reward components by default (docs/guides/grpo.md:756); this is the lab's version of adding it.
    """

    def __init__(self, task: WeightedRewardTask) -> None:
        if not isinstance(task, WeightedRewardTask):
            raise TypeError(f"task must be a WeightedRewardTask, got {type(task).__name__}")
        self.task = task
        self.rows: list[dict[str, float]] = []

    def __call__(self, step: int, metrics: Mapping[str, float], policy=None) -> bool:
        row = {f"raw/{k}": v for k, v in self.task.take_raw_means().items()}
        row.update({f"weight/{k}": w for k, w in self.task.weights.items()})
        self.rows.append(row)
        return False  # never stops training

    def series(self, key: str) -> np.ndarray:
        """``key`` (e.g. ``"raw/reward/brevity"``) at every recorded step."""
        if not self.rows or key not in self.rows[0]:
            raise KeyError(f"no recorded key {key!r}; keys: {sorted(self.rows[0]) if self.rows else []}")
        return np.array([r[key] for r in self.rows], dtype=float)


class TargetWeightBalancer(ComponentLog):
    """Move one component's weight so that a guarded component's mean tracks a target.

    After each step ``t``, with ``m_t`` the unweighted mean of ``guard`` over that step's responses
    and ``e_t = beta * e_{t-1} + (1 - beta) * m_t`` its moving average (``e_0 = m_0``), the weight of
    ``component`` becomes

        ``w_{t+1} = clip(w_t + lr * (e_t - target), 0, max_weight)``

    It rises while the guard is above target, and falls when the guard drops below it: the direction
    of a Lagrange-multiplier update for the constraint "guard >= target", with ``w`` in the role of
    ``1 / multiplier``, applied additively and clipped to ``[0, max_weight]``.

    NeMo RL has no dynamic weight balancing. The same rule fits in a custom environment
    (``EnvironmentInterface.step``), which sees every batch it scores and can keep the statistics.
    """

    def __init__(self, task: WeightedRewardTask, component: str, guard: str, target: float,
                 lr: float = 0.5, beta: float = 0.5, max_weight: float = 1.0) -> None:
        super().__init__(task)
        comps = task.reward_components
        if component not in comps:
            raise ValueError(f"component must be one of {comps}, got {component!r}")
        if guard not in comps or guard == component:
            raise ValueError(f"guard must be one of {comps} other than component, got {guard!r}")
        for name, value, lo, hi in (("target", target, 0.0, 1.0), ("beta", beta, 0.0, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        for name, value in (("lr", lr), ("max_weight", max_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0
            ):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.component, self.guard = component, guard
        self.target, self.lr, self.beta = float(target), float(lr), float(beta)
        self.max_weight = float(max_weight)
        self.ema: float | None = None

    def update(self, guard_mean: float) -> float:
        """Apply the rule to one step's guard mean ``m_t``; return the new weight ``w_{t+1}``."""
        self.ema = guard_mean if self.ema is None else self.beta * self.ema + (1 - self.beta) * guard_mean
        w = self.task.weights[self.component] + self.lr * (self.ema - self.target)
        w = min(max(w, 0.0), self.max_weight)
        self.task.set_weights({**self.task.weights, self.component: w})
        return w

    def __call__(self, step: int, metrics: Mapping[str, float], policy=None) -> bool:
        super().__call__(step, metrics, policy)
        self.update(self.rows[-1][f"raw/{self.guard}"])
        return False
