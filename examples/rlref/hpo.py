"""Hyperparameter-search helpers: NeMo RL command lines, TensorBoard read-back, and study summaries.

NeMo RL has no built-in hyperparameter search (no Optuna or Ray Tune import in its repository). What
it has is a CLI that takes Hydra-style overrides ``a.b=value`` (``++a.b=value`` for a key absent from
the YAML; nemo_rl/utils/config.py:172-192) and loggers that write TensorBoard event files under
``logger.log_dir`` (nemo_rl/utils/logger.py:985-1011). A search therefore drives one launch per trial:

    :func:`format_override` / :func:`overrides_from_params`: a trial's parameters -> the exact
    override strings; :func:`grpo_command`: the ``uv run python examples/run_grpo.py --config ...``
    argument list; :func:`read_scalars`: a metric read back from the run's event files.

Study summaries used by the Hyperparameter Optimization notebook:
    :func:`best_so_far` (running best of the trial values), :func:`pareto_mask` (non-dominated
    points of a multi-objective study) and :func:`pruning_savings` (training steps a pruner saved);
    :func:`expected_accuracy`, a trial's objective: the exact held-out reward of the sampling policy.

Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "format_override", "overrides_from_params", "grpo_command", "read_scalars", "best_so_far",
    "pareto_mask", "pruning_savings", "expected_accuracy",
]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _format_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"override values must be finite, got {value!r}")
        return repr(v)
    if isinstance(value, str):
        if value == "" or any(c in value for c in " ,=[]{}'\"\n"):
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return value
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as a CLI override value: {value!r}")


def format_override(key: str, value, add: bool = False) -> str:
    """One Hydra-style override: ``key=value``, or ``++key=value`` when ``add`` (key absent from the YAML).

    Values: bool -> ``true``/``false``, None -> ``null``, int as is, float as Python's shortest
    round-trip ``repr`` (``5e-06``), list -> ``[a,b]``, a string quoted only when it holds spaces or
    override syntax. NeMo RL applies overrides in OmegaConf struct mode, so a new key without ``++``
    is an error there (nemo_rl/utils/config.py:172-192).
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"override key must be a dotted name like 'loss_fn.ratio_clip_max', got {key!r}")
    return f"{'++' if add else ''}{key}={_format_value(value)}"


def overrides_from_params(params: Mapping[str, object], key_map: Mapping[str, str],
                          fixed: Mapping[str, object] | None = None,
                          new_keys: Sequence[str] = ()) -> list[str]:
    """Turn a trial's ``params`` into override strings, in ``key_map`` order, then ``fixed`` ones.

    ``key_map`` maps each search parameter name to its config key (every parameter must be mapped:
    a parameter that silently goes nowhere would make the search optimise noise). ``fixed`` holds
    per-study settings (log directory, step count, seed). Keys listed in ``new_keys`` get ``++``.
    """
    unknown = set(params) - set(key_map)
    if unknown:
        raise ValueError(f"parameters without a config key in key_map: {sorted(unknown)}")
    missing = [name for name in key_map if name not in params]
    if missing:
        raise ValueError(f"params is missing {missing} (key_map expects {list(key_map)})")
    items = [(key_map[name], params[name]) for name in key_map]
    items += list((fixed or {}).items())
    keys = [k for k, _ in items]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"config keys set twice: {dup}")
    new = set(new_keys)
    return [format_override(k, v, add=k in new) for k, v in items]


def grpo_command(config: str, overrides: Sequence[str], script: str = "examples/run_grpo.py") -> list[str]:
    """The argument list of one NeMo RL launch: ``uv run python <script> --config <config> <overrides...>``.

    Pass it to ``subprocess.run`` from the root of a NeMo RL checkout (README.md:355-358 shows
    ``--config``; overrides follow as separate arguments).
    """
    if not isinstance(config, str) or not config:
        raise ValueError(f"config must be a non-empty path string, got {config!r}")
    overrides = list(overrides)
    for o in overrides:
        if not isinstance(o, str) or "=" not in o:
            raise ValueError(f"each override must be a 'key=value' string, got {o!r}")
    return ["uv", "run", "python", script, "--config", config, *overrides]


def read_scalars(log_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """Every ``(step, value)`` logged under TensorBoard ``tag`` in the event files below ``log_dir``.

    Searches ``log_dir`` recursively (NeMo RL writes to ``<log_dir>/exp_NNN/tensorboard``), merges
    the files in name order and returns the points sorted by step (a later file wins on a repeated
    step). Raises ``FileNotFoundError`` when there is no event file and ``KeyError`` when no file
    has ``tag``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(log_dir)
    files = sorted(root.rglob("events.out.tfevents.*")) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {str(root)!r}")
    points: dict[int, float] = {}
    seen_tags: set[str] = set()
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        seen_tags.update(tags)
        if tag in tags:
            for ev in acc.Scalars(tag):
                points[int(ev.step)] = float(ev.value)
    if not points:
        raise KeyError(f"no scalar {tag!r} under {str(root)!r}; tags found: {sorted(seen_tags)}")
    return sorted(points.items())


def best_so_far(values, direction: str = "maximize") -> np.ndarray:
    """Running best of trial values in trial order: ``b_t = max_{i<=t} y_i`` (``min`` to minimise).

    NaN values (failed or pruned trials without a value) are skipped; the running best is NaN until
    the first finite value.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    y = np.asarray(values, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {y.shape}")
    sign = 1.0 if direction == "maximize" else -1.0
    filled = np.where(np.isnan(y), -np.inf, sign * y)
    out = np.maximum.accumulate(filled) * sign if y.size else filled
    out[np.isinf(out)] = np.nan
    return out


def pareto_mask(points, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points [n, m]``.

    Row ``a`` dominates row ``b`` when it is at least as good in every objective and strictly
    better in one (``directions[j]`` is ``"maximize"`` or ``"minimize"``). Identical rows do not
    dominate each other, so duplicates on the front are all kept (Optuna's ``study.best_trials``
    does the same).
    """
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"points must be a non-empty [n, m] array, got shape {p.shape}")
    if len(directions) != p.shape[1]:
        raise ValueError(f"got {len(directions)} directions for {p.shape[1]} objectives")
    if not np.all(np.isfinite(p)):
        raise ValueError("points must be finite")
    signs = []
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise ValueError(f"each direction must be 'maximize' or 'minimize', got {d!r}")
        signs.append(1.0 if d == "maximize" else -1.0)
    g = p * np.asarray(signs)  # larger is better in every column
    ge = (g[:, None, :] >= g[None, :, :]).all(-1)  # ge[a, b]: a at least as good as b everywhere
    gt = (g[:, None, :] > g[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)
    return ~dominated


def pruning_savings(steps_run: Sequence[int], full_steps: int) -> dict[str, float]:
    """Compute saved by early stopping: ``1 - Σ steps_run / (n_trials · full_steps)``.

    ``steps_run[i]`` is how many training steps trial ``i`` ran (``full_steps`` when it finished).
    Returns ``{"trials", "pruned", "steps_run", "steps_full", "saved_fraction"}``.
    """
    if isinstance(full_steps, bool) or not isinstance(full_steps, int) or full_steps < 1:
        raise ValueError(f"full_steps must be a positive int, got {full_steps!r}")
    s = [int(x) for x in steps_run]
    if not s:
        raise ValueError("steps_run is empty")
    if any(x < 0 or x > full_steps for x in s):
        raise ValueError(f"each steps_run value must be in [0, {full_steps}], got {s}")
    total, full = sum(s), len(s) * full_steps
    return {"trials": float(len(s)), "pruned": float(sum(x < full_steps for x in s)),
            "steps_run": float(total), "steps_full": float(full), "saved_fraction": 1.0 - total / full}


def expected_accuracy(policy, problems: Sequence) -> float:
    """Exact expected accuracy of sampling at temperature 1: ``mean_p prod_t pi(a_t | prompt, a_<t)``.

    For a task whose only correct response is the answer and which allows no extra tokens
    (``last``, ``pick``, ``copy``, ... with ``extra_tokens=0``), this is the expected
    ``reward/correct`` of one sampled response per problem, computed from one forward pass instead
    of estimated from samples. NeMo RL's counterpart is ``validation/accuracy`` (a sampled estimate
    on ``data.validation``, nemo_rl/algorithms/grpo.py:638-641).
    """
    import torch

    from rlref.lab.rollout import pad_sequences, sequence_logprobs

    problems = list(problems)
    if not problems:
        raise ValueError("problems is empty")
    for p in problems:
        if not all(hasattr(p, k) for k in ("prompt", "answer", "max_new_tokens", "task")):
            raise TypeError(f"problems must be rlref.lab Problems, got {type(p).__name__}")
        if p.task.name == "greater":
            raise ValueError("expected_accuracy needs a task with one correct response; "
                             "'greater' accepts several")
        if p.max_new_tokens != len(p.answer):
            raise ValueError("expected_accuracy needs extra_tokens=0 (the response is exactly the answer)")
    ids = pad_sequences([list(p.prompt) + list(p.answer) for p in problems])
    lp = sequence_logprobs(policy, ids).cpu()  # column t = log pi(token t | tokens < t)
    start = torch.tensor([len(p.prompt) for p in problems]).unsqueeze(1)
    end = start + torch.tensor([len(p.answer) for p in problems]).unsqueeze(1)
    col = torch.arange(ids.shape[1]).unsqueeze(0)
    mask = (col >= start) & (col < end)
    return float(torch.where(mask, lp, 0.0).sum(1).exp().mean())
