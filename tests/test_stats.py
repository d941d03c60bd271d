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


# -- t intervals for few seeds, and why the bootstrap is not the default ----------------------------

N_SIM = 20_000  # replications: the standard error of a 95 % coverage estimate is 0.15 %


def _coverage(make_interval, draw, truth, n_sim=N_SIM, seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_sim):
        ci = make_interval(*draw(rng))
        hits += ci.low <= truth <= ci.high
    return hits / n_sim


def test_t_ci_covers_95_percent_with_five_seeds():
    cover = _coverage(stats.t_ci, lambda rng: (rng.normal(0.3, 1.0, 5),), 0.3)
    assert 0.93 <= cover <= 0.97


def test_paired_t_ci_covers_95_percent_with_five_seed_pairs():
    def draw(rng):  # the seed's luck (sd 2) is shared by both arms; the arms differ by 0.3
        luck = rng.normal(0.0, 2.0, 5)
        return luck + rng.normal(0.3, 1.0, 5), luck + rng.normal(0.0, 1.0, 5)

    cover = _coverage(stats.paired_t_ci, draw, 0.3, seed=1)
    assert 0.93 <= cover <= 0.97


def test_welch_t_ci_covers_95_percent_with_five_seeds_per_arm_and_unequal_spread():
    cover = _coverage(stats.welch_t_ci, lambda rng: (rng.normal(0.3, 1.0, 5), rng.normal(0.0, 3.0, 5)), 0.3,
                      seed=2)
    assert 0.93 <= cover <= 0.97


def test_percentile_bootstrap_undercovers_with_five_seeds():
    # Documents why the t intervals are the default for <= 10 seeds: a nominal 95 % percentile
    # bootstrap covers about 85 % at n = 5 (the resampled means are too narrow, normal-like quantiles).
    def draw(rng):
        return rng.normal(0.0, 1.0, 5), int(rng.integers(1 << 30))

    one = _coverage(lambda x, i: stats.bootstrap_ci(x, n_resamples=400, seed=i), draw, 0.0, n_sim=800, seed=3)
    diff = _coverage(lambda x, y: stats.bootstrap_diff_ci(x, y, n_resamples=1000),
                     lambda rng: (rng.normal(0.0, 1.0, 5), rng.normal(0.0, 1.0, 5)), 0.0, n_sim=2000, seed=4)
    assert 0.78 <= one <= 0.90  # SE about 1.3 %: far below the 93 % the t intervals never drop under
    assert 0.82 <= diff <= 0.91  # SE about 0.8 %


def test_t_intervals_match_scipy():
    rng = np.random.default_rng(5)
    x, y = rng.normal(1.0, 1.0, 6), rng.normal(0.0, 2.5, 4)
    ref = st.ttest_ind(x, y, equal_var=False).confidence_interval(0.9)
    ci = stats.welch_t_ci(x, y, level=0.9)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high))
    assert stats.welch_df(x, y) == pytest.approx(st.ttest_ind(x, y, equal_var=False).df)
    y6 = rng.normal(0.0, 1.0, 6)
    ref = st.ttest_rel(x, y6).confidence_interval(0.95)
    ci = stats.paired_t_ci(x, y6)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx(((x - y6).mean(), ref.low, ref.high))


def test_compare_gives_the_t_interval_and_p_value_of_its_design():
    rng = np.random.default_rng(6)
    x, y = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 1.0, 5)
    paired, welch = stats.compare(x, y, paired=True), stats.compare(x, y, paired=False)
    assert paired.pvalue == pytest.approx(st.ttest_rel(x, y).pvalue)
    assert welch.pvalue == pytest.approx(st.ttest_ind(x, y, equal_var=False).pvalue)
    assert paired.interval == stats.paired_t_ci(x, y)
    assert welch.interval == stats.welch_t_ci(x, y)
    one = stats.compare(x - y)
    assert one.pvalue == pytest.approx(paired.pvalue) and one.method == "one-sample t"
    for c in (paired, welch, one):  # interval and test agree: 0 lies outside iff p < 1 - level
        assert (c.low > 0 or c.high < 0) == (c.pvalue < 0.05)
    # Equal differences are decided without a t distribution.
    assert stats.compare([1.0, 2.0], [1.0, 2.0], paired=True).pvalue == 1.0
    assert stats.compare([1.0, 2.0], [0.5, 1.5], paired=True).pvalue == 0.0
    assert stats.compare([1.0, 1.0], [1.0, 1.0], paired=False).pvalue == 1.0


def test_comparison_formats_the_glue_string():
    c = stats.Comparison(0.1234, 0.031, 0.2109, 0.01234, 10, "paired t")
    assert str(c) == "+0.12 [+0.03, +0.21], p = 0.012, n = 10 seeds (paired)"
    w = stats.Comparison(-0.5, -0.91, -0.09, 0.0004, 5, "Welch t", n_y=4)
    assert w.format(1) == "-0.5 [-0.9, -0.1], p < 0.001, n = 5 + 4 seeds"
    assert str(stats.Comparison(0.2, -0.1, 0.5, 0.2, 6, "one-sample t")).endswith("p = 0.2, n = 6 seeds")
    assert "p (Holm) = 0.025" in str(stats.correct_secondary({"a": c, "b": c})["a"])


def test_holm_adjusted_pvalues_reject_exactly_what_holm_rejects():
    rng = np.random.default_rng(7)
    for _ in range(300):
        p = rng.uniform(0, 0.1, rng.integers(1, 7)) ** rng.uniform(0.5, 2)
        adjusted = stats.holm_adjusted_pvalues(p)
        for alpha in (0.01, 0.05, 0.1):
            assert [a <= alpha for a in adjusted] == stats.holm_bonferroni(p, alpha)
    assert stats.holm_adjusted_pvalues([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm_adjusted_pvalues([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_correct_secondary_adjusts_the_family_and_leaves_the_primary_out():
    rng = np.random.default_rng(8)
    base = rng.normal(0.0, 1.0, 6)
    arms = {name: stats.compare(base + shift + rng.normal(0, 0.3, 6), base, paired=True)
            for name, shift in (("small", 0.1), ("large", 2.0), ("none", 0.0))}
    corrected = stats.correct_secondary(arms)
    assert list(corrected) == list(arms) and all(c.holm for c in corrected.values())
    assert [c.pvalue for c in corrected.values()] == pytest.approx(
        stats.holm_adjusted_pvalues([c.pvalue for c in arms.values()]))
    assert [c.estimate for c in corrected.values()] == [c.estimate for c in arms.values()]
    assert corrected["large"].rejects() and all(c.pvalue >= arms[n].pvalue for n, c in corrected.items())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: stats.paired_t_ci([1.0, 2.0, 3.0], [1.0, 2.0]), ValueError, "one value per seed"),
        (lambda: stats.welch_t_ci([1.0], [1.0, 2.0]), ValueError, "at least 2"),
        (lambda: stats.t_ci([1.0, 2.0], level=95), ValueError, "level"),
        (lambda: stats.compare([1.0, 2.0], [1.0, 3.0]), TypeError, "paired"),
        (lambda: stats.compare([1.0, 2.0], paired=True), ValueError, "paired applies"),
        (lambda: stats.correct_secondary({}), ValueError, "non-empty"),
        (lambda: stats.correct_secondary({"a": 0.01}), TypeError, "Comparison"),
        (lambda: stats.holm_adjusted_pvalues([0.1, float("nan")]), ValueError, r"\[0, 1\]"),
        (lambda: stats.Comparison(0.0, 0.0, 0.0, 1.0, 2, "paired t").format(-1), ValueError, "digits"),
    ],
)
def test_bad_comparison_input_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bootstrap_ci_gives_the_same_interval_with_or_without_an_axis_argument():
    """np.mean/np.median are called once on all resamples; a plain function once per resample."""
    x = np.random.default_rng(7).normal(size=9)
    for reduce in (np.mean, np.median):
        fast = stats.bootstrap_ci(x, reduce, n_resamples=3000, seed=2)
        slow = stats.bootstrap_ci(x, lambda s, f=reduce: f(s), n_resamples=3000, seed=2)
        assert (fast.estimate, fast.low, fast.high) == (slow.estimate, slow.low, slow.high)
        assert fast.low < fast.estimate < fast.high
