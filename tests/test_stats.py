"""Tests for rlref.stats: known values, definitions, and simulated coverage."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from rlref import stats


@pytest.mark.parametrize(("d", "expected"), [(1.0, 17), (0.5, 64), (0.8, 26)])
def test_seeds_for_power_matches_textbook_sample_sizes(d, expected):
    # Cohen's tables for a two-sided two-sample t-test at alpha 0.05, power 0.8.
    assert stats.seeds_for_power(effect=d, sd=1.0) == expected


def test_seeds_for_power_handles_effects_far_above_the_spread():
    # Two seeds per arm already give power > 0.8 here; scipy's lower tail is NaN at this noncentrality.
    assert stats.seeds_for_power(effect=8.02, sd=1.0) == 2
    assert all(stats.seeds_for_power(effect=e, sd=1.0) <= 3 for e in (6.0, 10.0, 40.0))


def test_seeds_for_power_achieves_power_in_simulation():
    n = stats.seeds_for_power(effect=1.0, sd=2.0)
    rng = np.random.default_rng(0)
    rejections = sum(
        st.ttest_ind(rng.normal(1.0, 2.0, n), rng.normal(0.0, 2.0, n)).pvalue < 0.05 for _ in range(2000)
    )
    assert 0.77 <= rejections / 2000 <= 0.86


def test_bootstrap_ci_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    covered = 0
    for i in range(200):
        ci = stats.bootstrap_ci(rng.normal(3.0, 1.0, 20), n_resamples=2000, seed=i)
        covered += ci.low <= 3.0 <= ci.high
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_diff_ci_estimate_is_difference_of_means():
    ci = stats.bootstrap_diff_ci([1.0, 2.0, 3.0], [0.0, 0.5, 1.0])
    assert ci.estimate == pytest.approx(1.5)
    assert ci.low < 1.5 < ci.high


def test_t_ci_matches_formula():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    ci = stats.t_ci(x, level=0.9)
    half = st.t.ppf(0.95, 3) * x.std(ddof=1) / 2
    assert (ci.low, ci.high) == pytest.approx((x.mean() - half, x.mean() + half))


def test_pass_at_k_equals_brute_force_over_subsets():
    n, c = 6, 2
    outcomes = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert stats.pass_at_k(n, c, k) == pytest.approx(brute)


def test_holm_rejects_stepwise():
    assert stats.holm_bonferroni([0.01, 0.04, 0.03], alpha=0.05) == [True, False, False]
    assert stats.holm_bonferroni([0.001, 0.02, 0.04], alpha=0.05) == [True, True, True]


def test_welch_and_rank_tests_detect_a_large_shift_and_not_equality():
    a, b = np.arange(10.0), np.arange(10.0) + 20
    assert stats.welch_t_test(a, b).pvalue < 1e-6
    assert stats.rank_test(a, b).pvalue < 1e-3
    assert stats.rank_test(a, a).pvalue == pytest.approx(1.0)
    assert stats.cohens_d(b, a) == pytest.approx(20 / math.sqrt(a.var(ddof=1)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: stats.bootstrap_ci([1.0]), "at least 2"),
        (lambda: stats.t_ci([1.0, float("nan")]), "non-finite"),
        (lambda: stats.seeds_for_power(0.0, 1.0), "positive"),
        (lambda: stats.holm_bonferroni([1.5]), r"\[0, 1\]"),
        (lambda: stats.pass_at_k(3, 4, 1), "0 <= c <= n"),
        (lambda: stats.cohens_d([1.0, 1.0], [2.0, 2.0]), "zero variance"),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
