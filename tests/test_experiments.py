"""rlref.experiments: run metrics, pass@k over prompts, paired tests and power, reproducibility helpers."""

import itertools
import math
import random

import numpy as np
import pytest
import torch
from scipy import stats as st

from rlref import experiments as ex
from rlref.experiments import (
    area_under_curve,
    capture_rng_state,
    chunked_sum,
    final_value,
    first_difference,
    mean_pass_at_k,
    naive_pass_at_k,
    paired_seeds_for_power,
    paired_t_test,
    parameter_fingerprint,
    restore_rng_state,
    steps_to_threshold,
)


def test_final_value_is_mean_of_last_points():
    assert final_value([0, 1, 2, 3, 4], last=2) == 3.5
    assert final_value([5.0], last=1) == 5.0


def test_area_under_curve_is_trapezoid_over_steps_divided_by_length():
    y = np.array([0.0, 1.0, 1.0, 0.5])
    expected = np.trapezoid(y, dx=1.0) / (y.size - 1)
    assert area_under_curve(y) == pytest.approx(expected)
    assert area_under_curve([0.3, 0.3, 0.3]) == pytest.approx(0.3)  # a flat curve scores its level


def test_area_under_curve_rewards_earlier_learning_at_equal_final_value():
    early, late = [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]
    assert final_value(early, 1) == final_value(late, 1)
    assert area_under_curve(early) > area_under_curve(late)


def test_steps_to_threshold_first_crossing_smoothing_and_censoring():
    y = [0.0, 0.2, 0.9, 0.1, 0.8, 0.9, 1.0]
    assert steps_to_threshold(y, 0.8) == 2.0
    # the 3-step mean first reaches 0.8 at step 6, (0.8 + 0.9 + 1.0) / 3; the spike at step 2 is smoothed away
    assert steps_to_threshold(y, 0.8, window=3) == 6.0
    assert math.isnan(steps_to_threshold(y, 1.5))  # never reached: censored, not a number of steps


def test_mean_pass_at_k_equals_brute_force_over_subsets_averaged_over_prompts():
    n, counts = 6, [0, 2, 5, 6]
    for k in range(1, n + 1):
        exact = []
        for c in counts:
            outcomes = [1] * c + [0] * (n - c)
            subsets = list(itertools.combinations(outcomes, k))
            exact.append(sum(any(s) for s in subsets) / len(subsets))
        assert mean_pass_at_k(counts, n, k) == pytest.approx(np.mean(exact))


def test_pass_at_1_is_accuracy_and_naive_estimator_is_biased_low():
    counts, n = np.array([1, 3, 0, 8]), 8
    assert mean_pass_at_k(counts, n, 1) == pytest.approx((counts / n).mean())
    assert naive_pass_at_k(counts, n, 1) == pytest.approx((counts / n).mean())
    # Sampling n responses from a prompt with true success p: the unbiased estimator's mean is
    # 1-(1-p)^k, the plug-in one's is lower (Jensen: 1-(1-x)^k is concave in x).
    rng = np.random.default_rng(0)
    p, k = 0.2, 4
    c = rng.binomial(n, p, size=20_000)
    truth = 1 - (1 - p) ** k
    assert mean_pass_at_k(c, n, k) == pytest.approx(truth, abs=0.01)
    assert naive_pass_at_k(c, n, k) < truth - 0.03


def test_paired_t_test_matches_scipy_ttest_rel():
    rng = np.random.default_rng(1)
    x = rng.normal(size=8)
    y = x + rng.normal(0.3, 0.2, size=8)
    res = paired_t_test(x, y)
    ref = st.ttest_rel(x, y)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue)
    d = x - y
    assert res.effect_size == pytest.approx(d.mean() / d.std(ddof=1))


def test_paired_seeds_for_power_achieves_power_in_simulation():
    effect, sd_diff = 0.5, 1.0
    n = paired_seeds_for_power(effect, sd_diff)
    rng = np.random.default_rng(2)
    d = rng.normal(effect, sd_diff, size=(4000, n))
    power_n = (st.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05).mean()
    d_less = rng.normal(effect, sd_diff, size=(4000, n - 1))
    power_less = (st.ttest_1samp(d_less, 0.0, axis=1).pvalue < 0.05).mean()
    assert power_n >= 0.78 and power_less < 0.8
    assert n == 34  # textbook: paired t, d_z = 0.5, alpha = 0.05, power 0.8


def test_paired_seeds_for_power_never_rises_with_the_effect():
    # scipy's noncentral t can return NaN in the far lower tail (e.g. df=2, nc=10.2): it must not count
    ns = [paired_seeds_for_power(e, 0.0085) for e in (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15)]
    assert ns == sorted(ns, reverse=True)
    assert ns[-1] == 2


def test_fingerprint_detects_a_one_ulp_change_and_ignores_copies():
    m = torch.nn.Linear(4, 3)
    m2 = torch.nn.Linear(4, 3)
    m2.load_state_dict(m.state_dict())
    assert parameter_fingerprint(m) == parameter_fingerprint(m2)
    with torch.no_grad():
        m2.weight[0, 0] = torch.nextafter(m2.weight[0, 0], torch.tensor(math.inf))
    assert parameter_fingerprint(m) != parameter_fingerprint(m2)


def test_first_difference_finds_step_and_key():
    a = [{"x": 1.0, "y": 2.0}, {"x": 1.0, "y": float("nan")}]
    assert first_difference(a, [dict(s) for s in a]) is None  # NaN equals NaN here
    b = [{"x": 1.0, "y": 2.0}, {"x": 1.0, "y": 3.0}]
    assert first_difference(a, b) == (1, "y")
    assert first_difference(a, a[:1]) == (1, "<missing step>")
    assert first_difference([{"x": 1.0}], [{"x": 1.0, "z": 0.0}]) == (0, "z")


def test_restoring_rng_state_replays_all_streams_and_reseeding_does_not():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    _ = torch.rand(3)
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), torch.rand(2).tolist()) == first


def test_chunked_sum_orders_give_different_float32_bits_but_agree_in_float64():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    sums32 = {c: chunked_sum(x, c).item() for c in (1, 8, 64, 512)}
    assert len(set(sums32.values())) > 1
    exact = x.double().sum().item()
    assert all(abs(s - exact) < 1e-3 for s in sums32.values())
    assert chunked_sum(torch.tensor([1.0, 2.0, 3.0]), 2).item() == 6.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: final_value([1.0, 2.0], last=3), "last must be"),
        (lambda: area_under_curve([]), "non-empty"),
        (lambda: steps_to_threshold([1.0, float("nan")], 0.5), "non-finite"),
        (lambda: steps_to_threshold([1.0], "high"), "threshold"),
        (lambda: mean_pass_at_k([1, 9], 8, 2), r"integers in \[0, n=8\]"),
        (lambda: mean_pass_at_k([1, 2], 8, 9), "1 <= k <= n"),
        (lambda: naive_pass_at_k([0.5], 8, 1), "integers"),
        (lambda: paired_t_test([1.0, 2.0], [1.0]), "same number"),
        (lambda: paired_seeds_for_power(0.0, 1.0), "positive"),
        (lambda: parameter_fingerprint("model"), "torch.nn.Module"),
        (lambda: first_difference([1.0], [{"x": 1.0}]), "per-step metric dicts"),
        (lambda: restore_rng_state({"python": None}), "missing"),
        (lambda: chunked_sum(torch.arange(4), 2), "floating-point"),
        (lambda: chunked_sum(torch.ones(4), 0), "positive int"),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_paired_t_test_when_every_difference_is_equal():
    same = paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.pvalue == 1.0 and same.statistic == 0.0
    shifted = paired_t_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert shifted.pvalue == 0.0 and shifted.statistic == float("inf")


# -- shared lab experiments ------------------------------------------------------------------------

def _tiny_lab():
    from rlref.lab import VOCAB_SIZE, PolicyConfig

    lab = ex.research_lab("small")
    policy = PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    base = lab.base.replace(max_num_steps=2, num_prompts_per_step=4, train_global_batch_size=None)
    return ex.ResearchLab(policy, lab.task, base)


def test_research_lab_is_a_learning_task_with_held_out_prompts_and_nemo_default_loss():
    lab = ex.research_lab("small")
    assert lab.task.name == "last" and lab.task.constant_policy_score() == pytest.approx(0.1)
    assert lab.task.uniform_policy_score("held_out") == pytest.approx(0.1) and lab.task.held_out_problems()
    loss = lab.base.loss_fn
    clip = (loss.ratio_clip_min, loss.ratio_clip_max, loss.ratio_clip_c, loss.token_level_loss)
    assert clip == (0.2, 0.2, None, True)
    assert lab.arm(3, lr=1e-3).seed == 3 and lab.arm(3, lr=1e-3).lr == 1e-3
    with pytest.raises(ValueError, match="scale"):
        ex.research_lab("medium")


def test_train_arms_matches_grpo_train_and_shares_arms_through_the_cache(tmp_path, monkeypatch):
    from rlref.lab import TinyCausalLM, grpo_train

    monkeypatch.setenv("RLREF_RESULTS_CACHE", str(tmp_path))
    lab = _tiny_lab()
    arms = {"a": [lab.arm(s) for s in (0, 1)], "b": [lab.arm(s, normalize_rewards=False) for s in (0, 1)]}
    runs = ex.train_arms(lab.policy, lab.task, arms)
    ref = TinyCausalLM(lab.policy, seed=1)
    h = grpo_train(ref, lab.task, arms["b"][1])
    assert np.allclose(runs["b"].histories[1].series("train/reward"), h.series("train/reward"))
    got = ex.load_policies(lab.policy, runs["b"])[1]
    for (k, v), w in zip(ref.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.allclose(v, w, atol=1e-5), k
    # another notebook naming the same configs differently trains nothing
    monkeypatch.setattr("rlref.lab.grpo_train_seeds", lambda *a, **k: pytest.fail("trained a cached arm"))
    again = ex.train_arms(lab.policy, lab.task, {"other name": arms["b"]})
    assert np.array_equal(again["other name"].histories[0].series("train/reward"),
                          runs["b"].histories[0].series("train/reward"))


def test_train_arms_rejects_bad_arms():
    lab = _tiny_lab()
    with pytest.raises(ValueError, match="non-empty"):
        ex.train_arms(lab.policy, lab.task, {})
    with pytest.raises(ValueError, match="arms\\['a'\\]"):
        ex.train_arms(lab.policy, lab.task, {"a": []})
    with pytest.raises(TypeError, match="ArmRuns"):
        ex.load_policies(lab.policy, [])
