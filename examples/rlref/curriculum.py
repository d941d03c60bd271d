"""Curriculum learning on the lab's ``prompt_sampler`` hook: mixtures, gated progression, sample counts.

NeMo RL has no curriculum scheduler. Its extension point is a user function named by
``data.custom_dataloader`` that chooses, for every batch, which dataloader(s) the prompts come from;
the training loop can hand it information through ``MultipleDataloaderWrapper.set_records(...)``,
a call the user adds to ``grpo_train`` (nemo_rl/data/dataloader.py:50-114;
examples/custom_dataloader/custom_dataloader.py:22-80; docs/guides/grpo.md:230-245). The classes
here are that function's counterpart in the lab: each is a ``prompt_sampler(step, history)`` for
:func:`rlref.lab.grpo_train`, one task per difficulty level standing for one dataloader.

:class:`MixtureSampler`
    draws each prompt's level at random with fixed weights (uniform by default): no ordering.
:class:`GatedCurriculum`
    trains on one level at a time and moves to the next once the recent training accuracy on the
    current level reaches a threshold (the gate); it never moves back.
:func:`zero_variance_probability`
    the chance ``p^G + (1-p)^G`` that a prompt's ``G`` binary rewards are all equal, so that GRPO
    gives the whole group advantage 0 (too easy or too hard to learn from).
:func:`generated_samples`
    cumulative number of sampled responses, the cost axis on which dynamic sampling is compared.
:func:`resample_on_grid`
    a learning curve measured at run-specific x values, carried forward onto a shared grid, so
    runs with different costs can be averaged over seeds.

Dynamic sampling (DAPO; NeMo RL ``grpo.use_dynamic_sampling``) is already in the lab's
``grpo_train`` (``use_dynamic_sampling=True``), so it is not repeated here.
Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from rlref.lab.tasks import Problem, Task

__all__ = ["MixtureSampler", "GatedCurriculum", "zero_variance_probability", "generated_samples",
           "resample_on_grid"]


def _check_tasks(tasks) -> list[Task]:
    if isinstance(tasks, Task) or not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError("tasks must be a non-empty list of rlref.lab Tasks (one per level)")
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise TypeError(f"tasks[{i}] must be a rlref.lab Task (from make_task), got {type(t).__name__}")
    return list(tasks)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class MixtureSampler:
    """A ``prompt_sampler`` that draws every prompt's level independently: ``P(level k) = w_k / Σ w``.

    ``tasks`` holds one task per level (easiest first), ``weights`` one non-negative weight per
    level (None: uniform). Each call returns ``num_prompts_per_step`` problems whose levels and
    digits come from a ``torch.Generator`` seeded with ``seed``, so a run is reproducible; a new
    call (a new step, or another generation batch under dynamic sampling) draws new prompts.
    ``levels_drawn`` counts the prompts drawn per level.

    NeMo RL: a ``data.custom_dataloader`` function over one dataloader per level that takes a fixed
    number of ``data.num_prompts_per_dataloader``-prompt batches from each, in proportion to the
    weights (examples/custom_dataloader/custom_dataloader.py:22-55 is the uniform case). Those
    quotas fix the proportions within every batch; this sampler draws each prompt's level at random,
    so the proportions hold on average over steps.
    """

    def __init__(self, tasks: Sequence[Task], num_prompts_per_step: int,
                 weights: Sequence[float] | None = None, seed: int = 0) -> None:
        self.tasks = _check_tasks(tasks)
        _check_positive_int("num_prompts_per_step", num_prompts_per_step)
        if weights is None:
            weights = [1.0] * len(self.tasks)
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(self.tasks),):
            raise ValueError(f"weights must have one value per task ({len(self.tasks)}), got {list(weights)}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.num_prompts_per_step = num_prompts_per_step
        self.probs = torch.as_tensor(w / w.sum(), dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.levels_drawn = [0] * len(self.tasks)

    def __call__(self, step: int, history) -> list[Problem]:
        idx = torch.multinomial(self.probs, self.num_prompts_per_step, replacement=True,
                                generator=self.generator).tolist()
        problems = []
        for k in idx:
            self.levels_drawn[k] += 1
            problems += self.tasks[k].sample_prompts(1, self.generator)
        return problems


class GatedCurriculum:
    """A ``prompt_sampler`` that climbs a ladder of tasks, gated on the training accuracy.

    Rule, checked once at the start of each step ``t`` (before any prompt of that step is drawn):
    let ``k`` be the current level and ``a_1..a_n`` the ``accuracy_key`` values (default
    ``lab/accuracy``) logged by the steps trained at level ``k`` so far. Move to ``k + 1`` when
    ``n >= window`` and ``mean(a_{n-window+1..n}) >= threshold``; never move back; stay on the last
    level. ``level_at_step[t]`` records the level (0-based) of step ``t``; every call of the same
    step (dynamic sampling draws several batches per step) uses that level.

    NeMo RL: a ``data.custom_dataloader`` function over one dataloader per level that reads the
    level (or the recent accuracy) from its keyword arguments; the training loop passes them with
    ``MultipleDataloaderWrapper.set_records({...})`` before every batch, because the wrapper empties
    its records after each batch (nemo_rl/data/dataloader.py:93-114). ``grpo_train`` does not make
    that call: it is the edit the user adds (docs/guides/grpo.md:230-245).
    """

    def __init__(self, tasks: Sequence[Task], threshold: float = 0.5, window: int = 3,
                 accuracy_key: str = "lab/accuracy") -> None:
        self.tasks = _check_tasks(tasks)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not math.isfinite(threshold) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
        _check_positive_int("window", window)
        if not isinstance(accuracy_key, str) or not accuracy_key:
            raise ValueError(f"accuracy_key must be a non-empty str, got {accuracy_key!r}")
        self.threshold = float(threshold)
        self.window = window
        self.accuracy_key = accuracy_key
        self.level = 0
        self.level_at_step: list[int] = []

    def should_advance(self, accuracies: Sequence[float]) -> bool:
        """The gate: ``len(accuracies) >= window`` and the mean of the last ``window`` >= ``threshold``."""
        a = [float(x) for x in accuracies]
        if len(a) < self.window:
            return False
        return sum(a[-self.window:]) / self.window >= self.threshold

    def __call__(self, step: int, history) -> Task:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if step < len(self.level_at_step):  # another generation batch of a step already decided
            return self.tasks[self.level_at_step[step]]
        if step != len(self.level_at_step):
            raise ValueError(f"step {step} skips steps: the curriculum has seen {len(self.level_at_step)}")
        if len(history) != step:
            raise ValueError(f"history has {len(history)} steps, expected {step} at step {step}")
        if self.level < len(self.tasks) - 1:
            accs = [history[i][self.accuracy_key]
                    for i, k in enumerate(self.level_at_step) if k == self.level]
            if self.should_advance(accs):
                self.level += 1
        self.level_at_step.append(self.level)
        return self.tasks[self.level]


def zero_variance_probability(p, num_generations_per_prompt: int) -> np.ndarray:
    """Chance that ``G`` independent 0/1 rewards of success probability ``p`` are equal: ``p^G + (1-p)^G``.

    Such a group has zero reward variance, so every GRPO advantage in it is 0 and it contributes no
    policy gradient; dynamic sampling drops it. The expected number of generation batches to fill a
    step is then about ``1 / (1 - zero_variance_probability)``. ``p`` may be a number or an array
    (values in [0, 1]); ``G`` = ``num_generations_per_prompt`` (NeMo RL's key of the same name).
    """
    _check_positive_int("num_generations_per_prompt", num_generations_per_prompt)
    pa = np.asarray(p, dtype=float)
    if not np.all(np.isfinite(pa)) or np.any((pa < 0) | (pa > 1)):
        raise ValueError(f"p must be probabilities in [0, 1], got {p!r}")
    G = num_generations_per_prompt
    return pa**G + (1.0 - pa) ** G


def generated_samples(history, num_prompts_per_step: int, num_generations_per_prompt: int,
                      key: str = "lab/dynamic_sampling/gen_batches") -> np.ndarray:
    """Responses generated up to and including each step: ``S_t = P · G · Σ_{i<=t} b_i``.

    ``b_i`` is the number of generation batches of step ``i`` (``key``; 1 at every step of a run
    without dynamic sampling, where the key is absent), ``P`` = ``num_prompts_per_step`` and
    ``G`` = ``num_generations_per_prompt``. NeMo RL logs ``b_i`` as
    ``dynamic_sampling_num_gen_batches`` (nemo_rl/algorithms/grpo.py:3091-3092); its generation
    batch holds ``num_prompts_per_step × batch_multiplier`` prompts (nemo_rl/algorithms/grpo.py:565-573),
    so there ``P`` is that product.
    """
    _check_positive_int("num_prompts_per_step", num_prompts_per_step)
    _check_positive_int("num_generations_per_prompt", num_generations_per_prompt)
    if len(history) == 0:
        raise ValueError("history is empty")
    b = np.array([float(s.get(key, 1.0)) for s in history], dtype=float)
    if not np.all(np.isfinite(b)) or np.any(b < 1):
        raise ValueError(f"{key} must be >= 1 at every step, got {b.tolist()}")
    return num_prompts_per_step * num_generations_per_prompt * np.cumsum(b)


def resample_on_grid(x, y, grid) -> np.ndarray:
    """``y`` measured at increasing ``x``, read at each ``grid`` point as the last value with ``x <= g``.

    ``out[j] = y[i*]`` with ``i* = max{i : x_i <= grid_j}``; NaN where ``grid_j < x_0`` (not measured
    yet) or ``grid_j > x_last`` (the run had ended). The carried-forward curve is what a run
    "knows" at a given cost, so curves of runs with different costs per step can share an x axis.
    """
    xa, ya, ga = (np.asarray(v, dtype=float) for v in (x, y, grid))
    if xa.ndim != 1 or xa.size == 0 or ya.shape != xa.shape:
        raise ValueError(f"x and y must be 1-D of the same non-zero length, got {xa.shape} and {ya.shape}")
    if ga.ndim != 1:
        raise ValueError(f"grid must be 1-D, got shape {ga.shape}")
    if not np.all(np.isfinite(xa)) or np.any(np.diff(xa) <= 0):
        raise ValueError("x must be finite and strictly increasing")
    idx = np.searchsorted(xa, ga, side="right") - 1
    out = np.where(idx >= 0, ya[np.clip(idx, 0, None)], np.nan)
    out[ga > xa[-1]] = np.nan
    return out
