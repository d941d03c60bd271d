"""Helpers shared by the research notebooks: per-seed metrics of a run, and reproducibility checks.

Metrics of one run (one number per seed, for :mod:`rlref.stats`):
    :func:`final_value` (mean of the last steps), :func:`area_under_curve` (mean level of a learning
    curve), :func:`steps_to_threshold` (sample efficiency, NaN when never reached) and
    :func:`mean_pass_at_k` (the unbiased pass@k averaged over prompts; :func:`naive_pass_at_k` is the
    biased plug-in estimate it replaces).
Paired designs (every arm run with the same seeds):
    :func:`paired_t_test` and :func:`paired_seeds_for_power`, the paired counterparts of
    :func:`rlref.stats.welch_t_test` and :func:`rlref.stats.seeds_for_power`.
Lab experiments shared by the research pages:
    :func:`research_lab` (the policy, learning task and GRPO config the experimental-design, ablation
    and custom-algorithms notebooks start from) and :func:`train_arms` (every arm x seed in one
    :func:`rlref.lab.grpo_train_seeds` call, each arm cached on its own in :mod:`rlref.results_cache`,
    so two notebooks that run the same configs on the same seeds train them once per build);
    :func:`load_policies` rebuilds the trained policies from the cached weights.
Reproducibility:
    :func:`parameter_fingerprint` (sha256 of a model's parameters), :func:`first_difference` (the
    first step and metric where two runs differ), :func:`capture_rng_state` /
    :func:`restore_rng_state` (Python, NumPy and PyTorch RNG state, the part of a run that NeMo RL does
    not checkpoint) and :func:`chunked_sum` (the same numbers summed in a different order).

Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as _st

from rlref.plotting import smooth
from rlref.stats import TestResult, pass_at_k

__all__ = [
    "final_value", "area_under_curve", "steps_to_threshold", "mean_pass_at_k", "naive_pass_at_k",
    "paired_t_test", "paired_seeds_for_power", "parameter_fingerprint", "first_difference",
    "capture_rng_state", "restore_rng_state", "chunked_sum",
    "ResearchLab", "research_lab", "ArmRuns", "train_arms", "load_policies",
]


def _curve(values, name: str = "curve") -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def final_value(curve, last: int = 5) -> float:
    """Mean of the last ``last`` points of a learning curve: ``(1/L) Σ_{t=T-L}^{T-1} y_t``."""
    a = _curve(curve)
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= a.size:
        raise ValueError(f"last must be an int in [1, {a.size}], got {last!r}")
    return float(a[-last:].mean())


def area_under_curve(curve) -> float:
    """Normalised area under a learning curve (trapezoid rule over steps 0..T-1, divided by T-1).

    ``AUC = (1/(T-1)) Σ_{t=0}^{T-2} (y_t + y_{t+1}) / 2``: the average level of the curve, in the
    curve's own units, so a run that learns earlier scores higher at the same final value.
    A single point is its own AUC.
    """
    a = _curve(curve)
    if a.size == 1:
        return float(a[0])
    return float(((a[:-1] + a[1:]) / 2).mean())


def steps_to_threshold(curve, threshold: float, window: int = 1) -> float:
    """First step ``t`` at which the trailing ``window``-step mean of the curve reaches ``threshold``.

    ``min {t : smooth(y, window)_t >= threshold}``, or NaN when the run never gets there (a
    censored value: report how many runs reached it beside any average of the others).
    """
    a = _curve(curve)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    hit = np.flatnonzero(smooth(a, window) >= threshold)
    return float(hit[0]) if hit.size else math.nan


def _counts(correct_counts, n: int, k: int) -> np.ndarray:
    if isinstance(n, bool) or not isinstance(n, int) or isinstance(k, bool) or not isinstance(k, int) \
            or not 1 <= k <= n:
        raise ValueError(f"need integers 1 <= k <= n, got n={n!r}, k={k!r}")
    c = np.asarray(correct_counts)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(
            f"correct_counts must be a non-empty 1-D sequence (one count per prompt), got shape {c.shape}"
        )
    if not np.issubdtype(c.dtype, np.number) or not np.all(np.equal(np.mod(c, 1), 0)) \
            or c.min() < 0 or c.max() > n:
        raise ValueError(f"correct_counts must be integers in [0, n={n}], got {c.tolist()}")
    return c.astype(int)


def mean_pass_at_k(correct_counts, n: int, k: int) -> float:
    """Unbiased pass@k over prompts: ``mean_i [1 - C(n - c_i, k) / C(n, k)]``.

    ``correct_counts[i]`` is the number ``c_i`` of correct responses among ``n`` sampled for prompt
    ``i`` (:func:`rlref.stats.pass_at_k` per prompt).
    """
    c = _counts(correct_counts, n, k)
    return float(np.mean([pass_at_k(n, int(ci), k) for ci in c]))


def naive_pass_at_k(correct_counts, n: int, k: int) -> float:
    """The plug-in estimate ``mean_i [1 - (1 - c_i/n)^k]``: biased low for k > 1 (shown in the notebook)."""
    c = _counts(correct_counts, n, k)
    return float(np.mean(1.0 - (1.0 - c / n) ** k))


def _paired(x, y) -> np.ndarray:
    a, b = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if a.size != b.size or a.size < 2:
        raise ValueError(f"paired samples need the same number (>= 2) of seeds, got {a.size} and {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired samples contain non-finite values")
    return a - b


def paired_t_test(x, y) -> TestResult:
    """Two-sided paired t-test on per-seed differences ``d_i = x_i - y_i`` (seed ``i`` in both arms).

    ``t = mean(d) / (sd(d) / √n)`` with ``n - 1`` degrees of freedom; the effect size is
    ``d_z = mean(d) / sd(d)``. When every difference is equal, the test is decided without a t
    distribution: p = 1 if they are all 0 (two arms that never differ), p = 0 otherwise. Valid when
    seed ``i`` gives both arms the same initial weights, prompts and random streams, so that ``x_i``
    and ``y_i`` share their seed-to-seed luck.
    """
    d = _paired(x, y)
    sd = d.std(ddof=1)
    if sd == 0:  # every seed gives the same difference: none at all (p = 1), or a constant shift (p = 0)
        if d.mean() == 0:
            return TestResult("paired t-test", 0.0, 1.0, 0.0)
        shift = math.copysign(math.inf, d.mean())
        return TestResult("paired t-test", shift, 0.0, shift)
    t = d.mean() / (sd / math.sqrt(d.size))
    p = 2 * _st.t.sf(abs(t), d.size - 1)
    return TestResult("paired t-test", float(t), float(p), float(d.mean() / sd))


def paired_seeds_for_power(effect: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds (pairs) for a two-sided paired t-test to detect a mean difference ``effect``.

    Smallest ``n >= 2`` whose power under the noncentral t with ``n - 1`` degrees of freedom and
    noncentrality ``effect / (sd_diff / √n)`` reaches ``power``; ``sd_diff`` is the measured sd of the
    per-seed differences.
    """
    if effect <= 0 or sd_diff <= 0:
        raise ValueError(f"effect and sd_diff must be positive, got effect={effect}, sd_diff={sd_diff}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    for n in range(2, 100_000):
        df = n - 1
        nc = effect / (sd_diff / math.sqrt(n))
        crit = _st.t.ppf(1 - alpha / 2, df)
        lower = _st.nct.cdf(-crit, df, nc)  # negligible for nc > 0; scipy can return NaN for large nc
        if _st.nct.sf(crit, df, nc) + (lower if math.isfinite(lower) else 0.0) >= power:
            return n
    raise ValueError(f"more than 100000 seeds needed for effect={effect}, sd_diff={sd_diff}")


def parameter_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape and raw bytes), in ``state_dict`` order.

    Two models have equal fingerprints exactly when their states are bit-identical.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def first_difference(steps_a: Sequence[Mapping[str, float]],
                     steps_b: Sequence[Mapping[str, float]]) -> tuple[int, str] | None:
    """``(step, metric)`` of the first entry where two runs' per-step metrics differ, else None.

    Pass ``History.deterministic()`` of each run (wall-clock keys removed). Values compare exactly
    (NaN equals NaN); a step missing in one run, or a metric logged by one run only, is a difference.
    """
    for name, steps in (("steps_a", steps_a), ("steps_b", steps_b)):
        if not isinstance(steps, Sequence) or not all(isinstance(s, Mapping) for s in steps):
            raise TypeError(f"{name} must be a sequence of per-step metric dicts (History.deterministic())")
    for i in range(max(len(steps_a), len(steps_b))):
        if i >= len(steps_a) or i >= len(steps_b):
            return i, "<missing step>"
        a, b = steps_a[i], steps_b[i]
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return i, key
            x, y = float(a[key]), float(b[key])
            if not (x == y or (math.isnan(x) and math.isnan(y))):
                return i, key
    return None


def capture_rng_state() -> dict:
    """The state of Python's ``random``, NumPy's global RNG, PyTorch's CPU RNG and (if present) every
    CUDA device's RNG: what a checkpoint needs so that a resumed run continues the same random streams."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping) -> None:
    """Put back a state from :func:`capture_rng_state`."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state is missing {sorted(missing)}; pass the dict from capture_rng_state()")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def chunked_sum(values: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum a 1-D tensor as a reduction split into chunks would: sequential partial sums of ``chunk``
    consecutive elements, then a sequential sum of the partials (in the tensor's dtype).

    Mathematically every ``chunk`` gives the same number; in floating point the rounding differs,
    which is how split-K matrix multiplies, atomic adds and all-reduce orders change results.
    """
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or not values.is_floating_point():
        raise ValueError("values must be a 1-D floating-point tensor")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    n = values.numel()
    blocks = torch.zeros(-(-n // chunk) * chunk, dtype=values.dtype)
    blocks[:n] = values  # padding with zeros: x + 0 == x exactly, so it changes no partial sum
    blocks = blocks.view(-1, chunk)
    partials = torch.zeros(blocks.shape[0], dtype=values.dtype)
    for j in range(chunk):  # left to right inside each chunk (all chunks at once)
        partials = partials + blocks[:, j]
    total = torch.zeros((), dtype=values.dtype)
    for p in partials:  # then the partial sums, left to right
        total = total + p
    return total


# ==================================================================================================
# Lab experiments shared by the research notebooks
# ==================================================================================================


@dataclass(frozen=True)
class ResearchLab:
    """The setup the research notebooks share: ``policy`` (a TinyCausalLM config), ``task`` and ``base``
    (the control arm's :class:`rlref.lab.GRPOConfig`, seed 0). ``arm(seed, **changes)`` is the config
    of one run: the base with ``seed`` and the changed keys."""

    policy: object
    task: object
    base: object

    def arm(self, seed: int, **changes):
        return self.base.replace(seed=seed, **changes)


def research_lab(scale: str = "small", device: str = "cpu") -> ResearchLab:
    """The research pages' control: GRPO with NeMo RL's default loss on the learning task ``last``.

    Task ``last`` (3 digits, answer = the last digit, one response token): a constant and a uniformly
    random answer both score 0.1, and about a quarter of the prompt contexts are held out of training.
    Control arm: 16 prompts x 8 responses per step, two optimizer steps per batch
    (``train_global_batch_size=64``, so the ratio leaves 1 and the clip can act), leave-one-out
    baseline, reward normalisation, NeMo RL's default loss (``ratio_clip_min = ratio_clip_max = 0.2``,
    no dual clip, ``reference_policy_kl_penalty=0.01``, ``token_level_loss=True``;
    examples/configs/grpo_math_1B.yaml:80-102 in NeMo RL), lr 1e-2 for the tiny policy.
    ``scale="small"``: a 14K-parameter policy, 40 steps (learns from chance to about a third of the
    prompts); ``"full"``: a 0.1M-parameter policy, 120 steps.
    """
    from rlref.lab import VOCAB_SIZE, GRPOConfig, PolicyConfig, make_task
    from rlref.losses import ClippedPGLossConfig

    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda', got {type(device).__name__}")
    small = scale == "small"
    policy = PolicyConfig(VOCAB_SIZE, d_model=32 if small else 64, n_layers=1 if small else 2, n_heads=4,
                          max_seq_len=16)
    base = GRPOConfig(num_prompts_per_step=16, num_generations_per_prompt=8, train_global_batch_size=64,
                      max_num_steps=40 if small else 120, lr=1e-2,
                      loss_fn=ClippedPGLossConfig(reference_policy_kl_penalty=0.01), device=device)
    return ResearchLab(policy=policy, task=make_task("last", 3), base=base)


@dataclass
class ArmRuns:
    """The runs of one arm, one per seed: ``histories`` (rlref.lab.History) and ``states`` (the trained
    policies' ``state_dict``s on the CPU, for :func:`load_policies`)."""

    histories: list
    states: list


class _Miss(Exception):
    """Raised inside a cache probe: the arm is not stored yet."""


def _arm_key(policy, task, configs) -> dict:
    return {"what": "rlref.experiments.train_arms v1", "policy": policy, "task": task,
            "configs": list(configs)}


def train_arms(policy, task, arms: Mapping[str, Sequence], *, cache: bool = True) -> dict[str, ArmRuns]:
    """Train every arm over its seeds: ``arms`` maps an arm name to its GRPOConfigs (one per seed).

    Each seed's policy is ``TinyCausalLM(policy, seed=config.seed)``. All arms missing from the results
    cache are trained in one :func:`rlref.lab.grpo_train_seeds` call; each arm is then stored under a
    key made of ``policy``, ``task`` and its configs only (not its name), so another notebook that runs
    the same configs gets them without training. ``cache=False`` always trains.
    """
    from rlref.lab import TinyCausalLM, grpo_train_seeds
    from rlref.results_cache import cached

    if not isinstance(arms, Mapping) or not arms:
        raise ValueError("arms must be a non-empty mapping of arm name -> list of GRPOConfig")
    for name, configs in arms.items():
        if isinstance(configs, (str, bytes)) or not isinstance(configs, Sequence) or not configs:
            raise ValueError(f"arms[{name!r}] must be a non-empty list of GRPOConfig (one per seed)")
    out: dict[str, ArmRuns] = {}
    if cache:
        for name, configs in arms.items():
            try:
                out[name] = cached(_arm_key(policy, task, configs), _raise_miss)
            except _Miss:
                pass
    missing = [name for name in arms if name not in out]
    if missing:
        flat = [c for name in missing for c in arms[name]]
        policies = [TinyCausalLM(policy, seed=c.seed) for c in flat]
        histories = grpo_train_seeds(policies, task, flat)
        i = 0
        for name in missing:
            n = len(arms[name])
            runs = ArmRuns(histories=list(histories[i:i + n]),
                           states=[{k: v.detach().cpu().clone() for k, v in p.state_dict().items()}
                                   for p in policies[i:i + n]])
            i += n
            out[name] = cached(_arm_key(policy, task, arms[name]), lambda runs=runs: runs) if cache else runs
    return {name: out[name] for name in arms}


def _raise_miss():
    raise _Miss


def load_policies(policy, runs: ArmRuns) -> list:
    """The trained policies of one arm: ``TinyCausalLM(policy)`` with each stored ``state_dict``."""
    from rlref.lab import TinyCausalLM

    if not isinstance(runs, ArmRuns):
        raise TypeError(f"runs must be an ArmRuns from train_arms, got {type(runs).__name__}")
    models = []
    for state in runs.states:
        m = TinyCausalLM(policy, seed=0)
        m.load_state_dict(state)
        models.append(m)
    return models
