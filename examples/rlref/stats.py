"""Statistics for comparing RL runs over seeds: intervals, tests, corrections and power.

The unit of replication is the seed: each function takes one number per seed (for example the mean
reward of a run's last steps) and never pools steps of one run as if they were independent.
NeMo RL has no built-in experiment statistics; these are the tools the research pages use.

With a handful of seeds (n <= 10) use the t intervals: :func:`t_ci` (one mean), :func:`paired_t_ci`
(arms run on the same seeds) and :func:`welch_t_ci` (independent seeds, unequal variances). Their
nominal 95 % covers 95 % at n = 5 for normal data (simulated in tests/test_stats.py). The percentile
bootstrap (:func:`bootstrap_ci`, :func:`bootstrap_diff_ci`) undercovers at such n: a nominal 95 %
interval covers about 85 %, so an interval that "excludes 0" is not a 5 % test.

One comparison, reported the same way on every page: :func:`compare` returns a :class:`Comparison`
(estimate, t interval, p-value, number of seeds) whose ``str`` is the glue string, for example
``+0.12 [+0.03, +0.21], p = 0.011, n = 10 seeds (paired)``. Declare the primary comparison before
running; :func:`correct_secondary` gives the others Holm-adjusted p-values (family-wise ``alpha``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special as _special
from scipy import stats as _st


def _t_quantile(q: float, df: float) -> float:
    """``t_{q, df}``: scipy.special.stdtrit, the function scipy.stats.t.ppf evaluates (same values,
    without its per-call overhead; the coverage simulations call the intervals 20000 times)."""
    return float(_special.stdtrit(df, q))


def _as_sample(x, name: str, min_size: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values (one per seed), got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values: {a.tolist()}")
    return a


__all__ = [
    "Interval", "bootstrap_ci", "bootstrap_diff_ci", "t_ci", "paired_t_ci", "welch_t_ci", "welch_df",
    "TestResult", "cohens_d", "welch_t_test", "rank_test", "holm_bonferroni", "holm_adjusted_pvalues",
    "Comparison", "compare", "correct_secondary", "seeds_for_power", "pass_at_k",
]


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

    ``statistic`` maps a 1-D sample to a number; one that takes ``axis`` (NumPy's reductions:
    ``np.mean``, ``np.median``, ...) computes all resamples in one call, any other once per resample.

    Small-sample caveat: the resampled means spread by ``sqrt((n-1)/n) * s/sqrt(n)`` and use normal-like
    quantiles, not t ones, so with few seeds the interval is too narrow: a nominal 95 % interval of a
    mean covers about 85 % at n = 5 (tests/test_stats.py). For a mean over <= 10 seeds use :func:`t_ci`.
    """
    a = _as_sample(x, "x")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    resamples = a[rng.integers(0, a.size, size=(n_resamples, a.size))]
    try:
        boot = np.asarray(statistic(resamples, axis=1), dtype=float)
    except TypeError:  # no axis argument
        boot = None
    if boot is None or boot.shape != (n_resamples,):
        boot = np.apply_along_axis(statistic, 1, resamples)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(statistic(a)), float(lo), float(hi), level)


def bootstrap_diff_ci(
    x, y, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of ``mean(x) - mean(y)`` (independent seeds in each arm).

    Small-sample caveat as for :func:`bootstrap_ci`: a nominal 95 % interval covers under 90 % with
    5 seeds per arm, so "the interval excludes 0" rejects a true null more than 5 % of the time. With
    <= 10 seeds per arm use :func:`welch_t_ci` (or :func:`paired_t_ci` when the arms share seeds).
    """
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, a.size, size=(n_resamples, a.size))].mean(axis=1)
    db = b[rng.integers(0, b.size, size=(n_resamples, b.size))].mean(axis=1)
    lo, hi = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(a.mean() - b.mean()), float(lo), float(hi), level)


def _check_level(level) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")


def t_ci(x, level: float = 0.95) -> Interval:
    """Student-t interval of the mean: ``mean ± t_{(1+level)/2, n-1} · s/√n``."""
    a = _as_sample(x, "x")
    _check_level(level)
    half = _t_quantile((1 + level) / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size)
    return Interval(float(a.mean()), float(a.mean() - half), float(a.mean() + half), level)


def _paired_differences(x, y) -> np.ndarray:
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    if a.size != b.size:
        raise ValueError(f"paired samples need one value per seed in both arms, got {a.size} and {b.size}")
    return a - b


def paired_t_ci(x, y, level: float = 0.95) -> Interval:
    """Paired-t interval of ``mean(x - y)`` when seed ``i`` ran both arms (``x_i``, ``y_i``).

    ``d_i = x_i - y_i``; ``mean(d) ± t_{(1+level)/2, n-1} · sd(d)/√n`` (:func:`t_ci` of the differences).
    """
    return t_ci(_paired_differences(x, y), level)


def welch_df(x, y) -> float:
    """Welch–Satterthwaite degrees of freedom ``(v_x + v_y)^2 / (v_x^2/(n_x-1) + v_y^2/(n_y-1))``,
    with ``v = s^2/n`` per arm (``n_x + n_y - 2`` when both arms have zero variance)."""
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return float(a.size + b.size - 2)
    return float((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)))


def welch_t_ci(x, y, level: float = 0.95) -> Interval:
    """Welch interval of ``mean(x) - mean(y)`` for independent seeds (unequal variances allowed).

    ``mean(x) - mean(y) ± t_{(1+level)/2, ν} · √(s_x²/n_x + s_y²/n_y)``, ``ν`` from :func:`welch_df`;
    the interval that matches :func:`welch_t_test`'s p-value (0 inside the interval iff p > 1 - level).
    """
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    _check_level(level)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    half = _t_quantile((1 + level) / 2, welch_df(a, b)) * se
    diff = float(a.mean() - b.mean())
    return Interval(diff, diff - half, diff + half, level)


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


def holm_adjusted_pvalues(pvalues) -> list[float]:
    """Holm-adjusted p-values: ``p̃_(k) = max_{j <= k} min(1, (m - j) · p_(j))`` (sorted ascending, j from 0).

    ``p̃_i <= alpha`` exactly when :func:`holm_bonferroni` rejects hypothesis ``i`` at ``alpha``.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    if p.size == 0 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"pvalues must be a non-empty list of numbers in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((p.size - np.arange(p.size)) * p[order]))
    out = np.empty(p.size)
    out[order] = adjusted
    return out.tolist()


def _format_p(p: float, name: str = "p") -> str:
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.2g}"


@dataclass(frozen=True)
class Comparison:
    """One comparison of per-seed values: estimate, t interval, two-sided p-value and seed count.

    ``method`` is ``"paired t"``, ``"Welch t"`` or ``"one-sample t"``; ``n`` is the number of seeds
    (pairs for a paired comparison, the ``x`` arm's seeds for Welch, whose ``y`` arm has ``n_y``);
    ``holm`` marks a Holm-adjusted p-value
    (:func:`correct_secondary`). ``str(c)`` is the string to glue into a page, e.g.
    ``+0.12 [+0.03, +0.21], p = 0.011, n = 10 seeds (paired)`` or ``..., n = 5 + 5 seeds`` (Welch);
    ``c.format(3)`` sets the decimals.
    """

    estimate: float
    low: float
    high: float
    pvalue: float
    n: int
    method: str
    level: float = 0.95
    n_y: int | None = None
    holm: bool = False

    @property
    def interval(self) -> Interval:
        return Interval(self.estimate, self.low, self.high, self.level)

    def rejects(self, alpha: float = 0.05) -> bool:
        """Whether the (adjusted, if ``holm``) p-value is at most ``alpha``."""
        return self.pvalue <= alpha

    def format(self, digits: int = 2) -> str:
        if isinstance(digits, bool) or not isinstance(digits, int) or digits < 0:
            raise ValueError(f"digits must be an int >= 0, got {digits!r}")
        if self.method == "paired t":
            seeds = f"n = {self.n} seeds (paired)"
        elif self.method == "Welch t":
            seeds = f"n = {self.n} + {self.n_y} seeds"
        else:
            seeds = f"n = {self.n} seeds"
        p = _format_p(self.pvalue, "p (Holm)" if self.holm else "p")
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}], {p}, {seeds}"

    def __str__(self) -> str:
        return self.format()


def compare(x, y=None, *, paired: bool | None = None, level: float = 0.95) -> Comparison:
    """Compare arm ``x`` with arm ``y`` (one value per seed each), or ``x`` with 0 when ``y`` is None.

    ``paired=True`` (seed ``i`` ran both arms: same initial weights, prompts and sampling streams):
    paired-t interval and test on ``x_i - y_i``. ``paired=False``: Welch interval and test. The choice
    must be stated (no default) because it changes the answer; a one-sample comparison takes neither.
    When every difference is equal the test needs no t distribution: p = 1 for none, 0 for a shift.
    """
    _check_level(level)
    if y is None:
        if paired is not None:
            raise ValueError("paired applies to two arms; pass y or leave paired unset")
        d, method = _as_sample(x, "x"), "one-sample t"
    else:
        if not isinstance(paired, bool):
            raise TypeError(f"paired must be True (same seeds in both arms) or False, got {paired!r}")
        if paired:
            d, method = _paired_differences(x, y), "paired t"
    if y is None or paired:
        ci = t_ci(d, level)
        sd = d.std(ddof=1)
        if sd == 0:
            p = 1.0 if d.mean() == 0 else 0.0
        else:
            p = float(2 * _st.t.sf(abs(d.mean()) / (sd / math.sqrt(d.size)), d.size - 1))
        return Comparison(ci.estimate, ci.low, ci.high, p, int(d.size), method, level)
    a, b = _as_sample(x, "x"), _as_sample(y, "y")
    ci = welch_t_ci(a, b, level)
    if a.var(ddof=1) + b.var(ddof=1) == 0:
        p = 1.0 if ci.estimate == 0 else 0.0
    else:
        p = float(_st.ttest_ind(a, b, equal_var=False).pvalue)
    return Comparison(ci.estimate, ci.low, ci.high, p, int(a.size), "Welch t", level, n_y=int(b.size))


def correct_secondary(secondary: Mapping[str, Comparison]) -> dict[str, Comparison]:
    """Holm-adjust the p-values of the secondary comparisons (the primary one, declared before the
    experiment, is tested alone at ``alpha`` and is not part of this family).

    Returns the same comparisons with ``pvalue`` replaced by :func:`holm_adjusted_pvalues` and
    ``holm=True``; ``c.rejects(alpha)`` then controls the family-wise error rate at ``alpha``.
    """
    if not isinstance(secondary, Mapping) or not secondary:
        raise ValueError("secondary must be a non-empty mapping of name -> Comparison")
    for name, c in secondary.items():
        if not isinstance(c, Comparison):
            raise TypeError(f"secondary[{name!r}] must be a Comparison from compare, got {type(c).__name__}")
        if c.holm:
            raise ValueError(f"secondary[{name!r}] is already Holm-adjusted")
    adjusted = holm_adjusted_pvalues([c.pvalue for c in secondary.values()])
    return {name: dataclasses.replace(c, pvalue=p, holm=True)
            for (name, c), p in zip(secondary.items(), adjusted, strict=True)}


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
