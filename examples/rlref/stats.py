"""Statistics for comparing RL runs over seeds: intervals, tests, corrections and power.

The unit of replication is the seed: each function takes one number per seed (for example the mean
reward of a run's last steps) and never pools steps of one run as if they were independent.
NeMo RL has no built-in experiment statistics; these are the tools the research pages use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st


def _as_sample(x, name: str, min_size: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values (one per seed), got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values: {a.tolist()}")
    return a


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float
    level: float

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}] ({self.level:.0%} CI)"


def bootstrap_ci(
    x, statistic=np.mean, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over seeds.

    Resample the per-seed values with replacement ``n_resamples`` times and take the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles of the resampled statistic.
    """
    a = _as_sample(x, "x")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_resamples, a.size))
    boot = np.apply_along_axis(statistic, 1, a[idx])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(statistic(a)), float(lo), float(hi), level)


def bootstrap_diff_ci(
    x, y, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of ``mean(x) - mean(y)`` (independent seeds in each arm)."""
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, a.size, size=(n_resamples, a.size))].mean(axis=1)
    db = b[rng.integers(0, b.size, size=(n_resamples, b.size))].mean(axis=1)
    lo, hi = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(a.mean() - b.mean()), float(lo), float(hi), level)


def t_ci(x, level: float = 0.95) -> Interval:
    """Student-t interval of the mean: ``mean ± t_{(1+level)/2, n-1} · s/√n``."""
    a = _as_sample(x, "x")
    half = _st.t.ppf((1 + level) / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size)
    return Interval(float(a.mean()), float(a.mean() - half), float(a.mean() + half), level)


@dataclass(frozen=True)
class TestResult:
    """A two-sample test: statistic, p-value and an effect size."""

    name: str
    statistic: float
    pvalue: float
    effect_size: float

    def __str__(self) -> str:
        return (
            f"{self.name}: statistic={self.statistic:.4g}, p={self.pvalue:.4g}, effect={self.effect_size:.4g}"
        )


def cohens_d(x, y) -> float:
    """Standardised mean difference ``(mean x - mean y) / s_pooled``."""
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    if pooled == 0:
        raise ValueError("cohens_d is undefined when both samples have zero variance")
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


def welch_t_test(x, y) -> TestResult:
    """Welch's t-test (unequal variances), two-sided, with Cohen's d as effect size."""
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    res = _st.ttest_ind(a, b, equal_var=False)
    return TestResult("Welch t-test", float(res.statistic), float(res.pvalue), cohens_d(a, b))


def rank_test(x, y) -> TestResult:
    """Mann-Whitney U test, two-sided; effect size is the probability P(X > Y) + P(X = Y)/2."""
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    res = _st.mannwhitneyu(a, b, alternative="two-sided")
    prob_superiority = float(res.statistic) / (a.size * b.size)
    return TestResult("Mann-Whitney U", float(res.statistic), float(res.pvalue), prob_superiority)


def holm_bonferroni(pvalues, alpha: float = 0.05) -> list[bool]:
    """Holm's step-down correction: which of ``m`` hypotheses are rejected at family-wise ``alpha``.

    Sort p-values ascending; reject ``p_(k)`` while ``p_(k) <= alpha / (m - k)`` (k from 0).
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    if p.size == 0 or np.any((p < 0) | (p > 1)):
        raise ValueError(f"pvalues must be a non-empty list of numbers in [0, 1], got {p.tolist()}")
    reject = [False] * p.size
    for k, i in enumerate(np.argsort(p)):
        if p[i] > alpha / (p.size - k):
            break
        reject[i] = True
    return reject


def seeds_for_power(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds per arm for a two-sided two-sample t-test to detect a mean difference ``effect``.

    Solves for the smallest n with power ``1 - β`` under the noncentral t distribution with
    ``n - 1 + n - 1`` degrees of freedom and noncentrality ``effect / (sd · √(2/n))``.
    ``sd`` is the between-seed standard deviation measured on the task.
    """
    if effect <= 0 or sd <= 0:
        raise ValueError(f"effect and sd must be positive, got effect={effect}, sd={sd}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    for n in range(2, 100_000):
        df = 2 * n - 2
        nc = effect / (sd * math.sqrt(2 / n))
        crit = _st.t.ppf(1 - alpha / 2, df)
        lower_tail = _st.nct.cdf(-crit, df, nc)  # scipy returns NaN here for a large nc; it is ~0
        achieved = 1 - _st.nct.cdf(crit, df, nc) + (0.0 if math.isnan(lower_tail) else lower_tail)
        if achieved >= power:
            return n
    raise ValueError(f"more than 100000 seeds needed for effect={effect}, sd={sd}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
