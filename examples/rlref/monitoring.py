"""Alert rules for RL training metrics, as code: the Performance Monitoring page's recipes.

NeMo RL logs the metrics (``train/kl_penalty``, ``train/approx_entropy``, ``train/reward``,
``train/loss``, ``train/grad_norm``, ``performance/tokens_per_sec``, ...) to W&B, TensorBoard, MLflow
or SwanLab; it has no alerting of its own. The rules here read those names from a stream of per-step
metric dicts (a :class:`rlref.lab.History`, or the dicts a logger reads back) and say when to look:

- :class:`NonFinite`: the loss or the gradient norm is NaN/Inf (critical);
- :class:`KLBlowup`: the KL to the reference jumps to ``factor`` x its recent median, or passes an
  absolute ``max_value`` (critical);
- :class:`EntropyCollapse`: the policy's entropy falls below ``min_fraction`` of its initial value;
- :class:`RewardPlateau`: the mean reward over the last ``window`` steps improves on the window
  before by less than ``min_improvement`` while still below ``target``;
- :class:`ThroughputDrop`: tokens/s stays below ``(1 - drop)`` x its recent median for ``patience``
  steps in a row.

:class:`Monitor` runs the rules step by step (pass it as ``grpo_train(..., callback=monitor)``; it can
stop the run on a critical alert) and reports an alert when a rule's condition *starts* to hold,
not at every step while it holds. :func:`check_history` replays a finished run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Alert", "Rule", "NonFinite", "KLBlowup", "EntropyCollapse", "RewardPlateau", "ThroughputDrop",
    "default_rules", "Monitor", "check_history", "SEVERITIES",
]

SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class Alert:
    """One alert: which rule, at which step, on which metric and value, and why."""

    rule: str
    step: int
    metric: str
    value: float
    severity: str
    message: str

    def __str__(self) -> str:
        return f"[{self.severity}] step {self.step}: {self.rule}: {self.message}"


def _check_window(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value, upper: float | None = None, allow_none: bool = False):
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if upper is not None and value >= upper:
        raise ValueError(f"{name} must be < {upper}, got {value!r}")
    return value


def _check_metric(metric) -> str:
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a non-empty metric name, got {metric!r}")
    return metric


class Rule:
    """Base class: ``condition(values, step)`` looks at one metric's values up to ``step`` and returns
    an explanation string when the condition holds, else None. ``values[name]`` is a list over steps
    holding None where a step did not log that metric."""

    name = "rule"
    severity = "warning"
    metric = ""

    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)

    #: the value :meth:`statistic` is compared with (None for rules without one)
    threshold: float | None = None

    def condition(self, values: Mapping[str, Sequence[float]], step: int) -> str | None:
        raise NotImplementedError

    def statistic(self, values: Mapping[str, Sequence[float]], step: int) -> float | None:
        """The number the rule compares with ``threshold`` at ``step`` (None where it cannot yet)."""
        return None

    def statistics(self, history) -> list[float]:
        """:meth:`statistic` at every step of a History or list of metric dicts (NaN where None)."""
        steps = getattr(history, "steps", history)
        values = {m: [None if s.get(m) is None else float(s[m]) for s in steps] for m in self.metrics()}
        out = [self.statistic(values, i) for i in range(len(steps))]
        return [math.nan if v is None else v for v in out]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _finite(xs: Iterable[float | None]) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x)]


def _is_finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


class NonFinite(Rule):
    """Critical: any of ``metrics`` (default ``train/loss`` and ``train/grad_norm``) is NaN or Inf.

    NeMo RL's DTensor path warns on an infinite gradient norm (a NaN norm passes without a warning,
    nemo_rl/utils/grad_norm.py:44-47) and steps the optimizer either way
    (nemo_rl/models/policy/workers/dtensor_policy_worker_v2.py:557-563), so the first NaN step is the
    one to catch. A metric missing at a step is not an alert.
    """

    name = "non_finite"
    severity = "critical"

    def __init__(self, metrics: Sequence[str] = ("train/loss", "train/grad_norm")) -> None:
        if isinstance(metrics, str) or not metrics:
            raise ValueError(f"metrics must be a non-empty sequence of names, got {metrics!r}")
        self.watch = tuple(_check_metric(m) for m in metrics)
        self.metric = self.watch[0]

    def metrics(self) -> tuple[str, ...]:
        return self.watch

    def condition(self, values, step):
        for m in self.watch:
            v = values[m][step]
            if v is not None and not math.isfinite(v):
                self.metric = m
                return f"{m} = {v}"
        return None


class KLBlowup(Rule):
    """Critical: ``metric`` > ``factor`` x median of the previous ``window`` values (and > ``min_value``,
    from step ``warmup_steps`` on), or > ``max_value`` at any step when given.

    ``train/kl_penalty`` is the k3 KL estimate to the reference policy that ClippedPGLoss logs (with
    ``reference_policy_kl_penalty`` > 0). It grows steadily in a healthy run; a sudden multiple of its
    recent level means the policy jumped (a bad update, a too-high learning rate). The KL starts at 0
    (the policy is the reference), so early ratios are large in healthy runs too: the ratio test
    waits ``warmup_steps`` steps and needs the KL above ``min_value``; set ``max_value`` to catch a
    blow-up during the warm-up.
    """

    name = "kl_blowup"
    severity = "critical"

    def __init__(self, metric: str = "train/kl_penalty", factor: float = 3.0, window: int = 5,
                 min_value: float = 0.1, max_value: float | None = None, warmup_steps: int = 10) -> None:
        self.metric = _check_metric(metric)
        self.factor = _check_positive("factor", factor)
        if self.factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor!r}")
        self.window = _check_window("window", window)
        self.min_value = _check_positive("min_value", min_value)
        self.max_value = _check_positive("max_value", max_value, allow_none=True)
        self.warmup_steps = _check_window("warmup_steps", warmup_steps, 0)

    @property
    def threshold(self) -> float:
        return self.factor

    def statistic(self, values, step):
        """``value / median(previous window)``; None during the warm-up, before a full window, or when the
        median is 0."""
        v = values[self.metric][step]
        prev = _finite(values[self.metric][max(0, step - self.window):step])
        if not _is_finite(v) or len(prev) < self.window or step < self.warmup_steps:
            return None
        ref = statistics.median(prev)
        return v / ref if ref > 0 else None

    def condition(self, values, step):
        v = values[self.metric][step]
        if not _is_finite(v):
            return None
        if self.max_value is not None and v > self.max_value:
            return f"{self.metric} = {v:.4g} > max_value {self.max_value:.4g}"
        ratio = self.statistic(values, step)
        if ratio is not None and v > self.min_value and ratio > self.factor:
            return f"{self.metric} = {v:.4g} is {ratio:.3g} x its recent median (> {self.factor:g})"
        return None


class EntropyCollapse(Rule):
    """Warning: ``metric`` < ``min_fraction`` x its mean over the first ``reference_steps`` steps.

    ``train/approx_entropy`` is ClippedPGLoss's per-token entropy estimate on the sampled responses
    (a diagnostic; NeMo RL has no entropy bonus). It falls as a policy learns; a fall to a small
    fraction of the start means sampling has become (nearly) greedy and exploration has stopped,
    which is expected once a task is solved and a problem before.
    """

    name = "entropy_collapse"
    severity = "warning"

    def __init__(self, metric: str = "train/approx_entropy", min_fraction: float = 0.1,
                 reference_steps: int = 3) -> None:
        self.metric = _check_metric(metric)
        self.min_fraction = _check_positive("min_fraction", min_fraction, upper=1.0)
        self.reference_steps = _check_window("reference_steps", reference_steps)

    @property
    def threshold(self) -> float:
        return self.min_fraction

    def statistic(self, values, step):
        """``value / mean(first reference_steps values)``; None during the reference steps."""
        v = values[self.metric][step]
        ref = _finite(values[self.metric][: self.reference_steps])
        if step < self.reference_steps or not ref or not _is_finite(v):
            return None
        start = sum(ref) / len(ref)
        return v / start if start > 0 else None

    def condition(self, values, step):
        frac = self.statistic(values, step)
        if frac is not None and frac < self.min_fraction:
            v = values[self.metric][step]
            return f"{self.metric} = {v:.4g} is {frac:.3g} x its initial value (< {self.min_fraction:g})"
        return None


class RewardPlateau(Rule):
    """Warning: mean(``metric``, last ``window`` steps) - mean(the ``window`` before) < ``min_improvement``,
    while the recent mean is below ``target`` (None: no target).

    Checked from step ``2 * window - 1`` on. On a flat run the difference is noise: with ``n`` samples
    per step and a 0/1 reward of mean ``p`` (and independent steps) its sd is about
    ``sqrt(2 p (1-p) / (n window))``, so a ``min_improvement`` near that sd fires on flat runs most of
    the time, while a much larger one also fires on slow but real learning.
    """

    name = "reward_plateau"
    severity = "warning"

    def __init__(self, metric: str = "train/reward", window: int = 6, min_improvement: float = 0.05,
                 target: float | None = None) -> None:
        self.metric = _check_metric(metric)
        self.window = _check_window("window", window)
        self.min_improvement = _check_positive("min_improvement", min_improvement)
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                                   or not math.isfinite(target)):
            raise ValueError(f"target must be a finite number or None, got {target!r}")
        self.target = target

    @property
    def threshold(self) -> float:
        return self.min_improvement

    def _means(self, values, step):
        w = self.window
        if step < 2 * w - 1:
            return None
        recent = _finite(values[self.metric][step - w + 1: step + 1])
        before = _finite(values[self.metric][step - 2 * w + 1: step - w + 1])
        if len(recent) < w or len(before) < w:
            return None
        return sum(recent) / w, sum(before) / w

    def statistic(self, values, step):
        """``mean(last window) - mean(window before)``; None before ``2 * window`` steps."""
        means = self._means(values, step)
        return None if means is None else means[0] - means[1]

    def condition(self, values, step):
        means = self._means(values, step)
        if means is None:
            return None
        now, then = means
        if self.target is not None and now >= self.target:
            return None
        if now - then < self.min_improvement:
            return (f"{self.metric}: mean of last {self.window} steps {now:.4g} vs {then:.4g} before "
                    f"({now - then:+.3g} < {self.min_improvement:g})")
        return None


class ThroughputDrop(Rule):
    """Warning: ``metric`` < ``(1 - drop)`` x median of the ``window`` steps before the dip, for ``patience``
    steps in a row.

    ``performance/tokens_per_sec`` is a wall-clock rate and noisy on a shared machine; ``patience``
    ignores single slow steps (a checkpoint save, a validation pass, a busy neighbour).
    """

    name = "throughput_drop"
    severity = "warning"

    def __init__(self, metric: str = "performance/tokens_per_sec", drop: float = 0.5, window: int = 8,
                 patience: int = 3) -> None:
        self.metric = _check_metric(metric)
        self.drop = _check_positive("drop", drop, upper=1.0)
        self.window = _check_window("window", window)
        self.patience = _check_window("patience", patience)

    @property
    def threshold(self) -> float:
        return 1 - self.drop

    def statistic(self, values, step):
        """``max(last patience values) / median(the window steps before them)``; fires below ``1 - drop``."""
        p, w = self.patience, self.window
        first = step - p + 1  # the first step of the candidate dip
        if first - w < 0:
            return None
        ref = _finite(values[self.metric][first - w: first])
        dip = _finite(values[self.metric][first: step + 1])
        if len(ref) < w or len(dip) < p:
            return None
        base = statistics.median(ref)
        return max(dip) / base if base > 0 else None

    def condition(self, values, step):
        ratio = self.statistic(values, step)
        if ratio is not None and ratio < 1 - self.drop:
            return (f"{self.metric} = {values[self.metric][step]:.4g}: {self.patience} steps in a row at "
                    f"<= {ratio:.3g} x the median before (< {1 - self.drop:g})")
        return None


def default_rules() -> list[Rule]:
    """One rule of each kind with its default thresholds."""
    return [NonFinite(), KLBlowup(), EntropyCollapse(), RewardPlateau(), ThroughputDrop()]


class Monitor:
    """Run ``rules`` after every step; record an :class:`Alert` when a rule's condition starts to hold.

    Use as ``grpo_train(..., callback=monitor)``: the lab calls ``monitor(step, metrics, policy)`` after
    each step, and a True return stops the run, which the monitor does on a critical alert when
    ``stop_on_critical``. ``on_alert`` callables receive each new alert (print it, log it to
    TensorBoard as text, page someone). ``monitor.update(metrics)`` feeds one step by hand (e.g. from a
    logger read back); ``alerts`` holds everything reported so far.
    """

    def __init__(self, rules: Sequence[Rule] | None = None, stop_on_critical: bool = False,
                 on_alert: Iterable[Callable[[Alert], object]] = ()) -> None:
        rules = default_rules() if rules is None else list(rules)
        for r in rules:
            if not isinstance(r, Rule):
                raise TypeError(f"rules must be Rule instances, got {type(r).__name__}")
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        self.rules = rules
        self.stop_on_critical = bool(stop_on_critical)
        self.on_alert = list(on_alert)
        for fn in self.on_alert:
            if not callable(fn):
                raise TypeError(f"on_alert entries must be callable, got {type(fn).__name__}")
        self.alerts: list[Alert] = []
        self._values: dict[str, list[float | None]] = {}
        self._active: dict[str, bool] = {r.name: False for r in rules}
        self.steps = 0

    def update(self, metrics: Mapping[str, float]) -> list[Alert]:
        """Feed one step's metrics; returns the alerts that started at this step."""
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping of name -> number, got {type(metrics).__name__}")
        step = self.steps
        for r in self.rules:
            for m in r.metrics():
                self._values.setdefault(m, [None] * step)
        for m in self._values:
            v = metrics.get(m)
            self._values[m].append(None if v is None else float(v))
        new = []
        for r in self.rules:
            why = r.condition(self._values, step)
            if why is not None and not self._active[r.name]:
                v = self._values[r.metric][step]
                new.append(Alert(r.name, step, r.metric, math.nan if v is None else v, r.severity, why))
            self._active[r.name] = why is not None
        self.steps += 1
        self.alerts.extend(new)
        for a in new:
            for fn in self.on_alert:
                fn(a)
        return new

    def __call__(self, step: int, metrics: Mapping[str, float], policy=None) -> bool:
        """The lab's callback signature; True (stop) on a new critical alert if ``stop_on_critical``."""
        new = self.update(metrics)
        return self.stop_on_critical and any(a.severity == "critical" for a in new)

    def fired(self, rule: str) -> list[Alert]:
        """The alerts of one rule, by name."""
        return [a for a in self.alerts if a.rule == rule]


def check_history(history, rules: Sequence[Rule] | None = None) -> list[Alert]:
    """Replay a finished run (a History or a list of per-step metric dicts) through a fresh Monitor."""
    steps = getattr(history, "steps", history)
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
        raise TypeError(f"history must be a History or a list of metric dicts, got {type(history).__name__}")
    mon = Monitor(rules)
    for metrics in steps:
        mon.update(metrics)
    return mon.alerts
