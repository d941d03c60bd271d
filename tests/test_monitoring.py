"""Alert rules (rlref.monitoring): hand-made series, then recorded lab GRPO runs with injected faults.

Each rule must fire on the run with its fault, at or after the step the fault is injected, and every
rule must stay silent on the clean run.
"""

import math
import time

import pytest
import torch

from rlref import monitoring as mon
from rlref.lab import SMALL, TinyCausalLM, grpo_train, make_task
from rlref.losses import ClippedPGLoss

FAULT_STEP = 10
STEPS = 22


def _steps(key, values):
    return [{key: v} for v in values]


# --------------------------------------------------------------------------------------------------
# Hand-made series: exact firing steps
# --------------------------------------------------------------------------------------------------


def test_non_finite_fires_on_nan_and_inf_not_on_missing():
    steps = [{"train/loss": 0.1, "train/grad_norm": 1.0}, {"train/loss": 0.2},
             {"train/loss": math.nan, "train/grad_norm": 1.0},
             {"train/loss": 0.1, "train/grad_norm": math.inf}]
    alerts = mon.check_history(steps, [mon.NonFinite()])
    # steps 2 and 3 are both non-finite: one alert (the condition holds on both), reported at step 2
    assert [(a.step, a.metric) for a in alerts] == [(2, "train/loss")]
    assert alerts[0].severity == "critical"


def test_alert_is_reported_when_condition_starts_not_while_it_holds():
    vals = [0.1, 0.1, math.nan, math.nan, 0.1, math.nan]
    alerts = mon.check_history(_steps("train/loss", vals), [mon.NonFinite(("train/loss",))])
    assert [a.step for a in alerts] == [2, 5]


def test_kl_blowup_ratio_and_absolute_limit():
    vals = [0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.5, 0.7]
    rule = mon.KLBlowup(factor=3.0, window=5, min_value=0.1, warmup_steps=5)
    alerts = mon.check_history(_steps("train/kl_penalty", vals), [rule])
    assert [a.step for a in alerts] == [7]  # 0.5 <= 3 x 0.2; 0.7 > 3 x median(0.2,0.2,0.2,0.2,0.5)=0.6
    assert alerts[0].value == pytest.approx(0.7)
    # the same jump inside the warm-up is not tested by ratio
    assert mon.check_history(_steps("train/kl_penalty", vals), [mon.KLBlowup(warmup_steps=8)]) == []
    # below min_value a ratio means nothing: 0.05 > 3 x 0.01 stays silent
    quiet = mon.check_history(_steps("train/kl_penalty", [0.01] * 6 + [0.05]), [rule])
    assert quiet == []
    capped = mon.check_history(_steps("train/kl_penalty", [0.5, 1.5]), [mon.KLBlowup(max_value=1.0)])
    assert [a.step for a in capped] == [1]


def test_entropy_collapse_against_initial_mean():
    vals = [3.0, 3.0, 3.0, 1.0, 0.31, 0.29, 0.2]
    alerts = mon.check_history(_steps("train/approx_entropy", vals), [mon.EntropyCollapse(min_fraction=0.1)])
    assert [a.step for a in alerts] == [5]


def test_reward_plateau_windows_and_target():
    rule = mon.RewardPlateau(window=3, min_improvement=0.05, target=0.9)
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert mon.check_history(_steps("train/reward", rising), [rule]) == []
    flat = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3]
    # step 5: mean(0.3,0.3,0.3) - mean(0.1,0.2,0.3) = 0.1 -> fine; step 6: 0.3 - 0.2667 = 0.033 < 0.05
    assert [a.step for a in mon.check_history(_steps("train/reward", flat), [rule])] == [6]
    solved = [0.95] * 8
    assert mon.check_history(_steps("train/reward", solved), [rule]) == []


def test_reward_plateau_statistic_on_a_flat_run_has_the_documented_noise_sd():
    # Flat 0/1 rewards of mean q, n samples per step: the gain between two windows of w steps has sd
    # sqrt(2 q (1 - q) / (n w)) (the docstring's and the Monitoring page's calibration formula).
    q, n, w, reps = 0.3, 16, 6, 4000
    g = torch.Generator().manual_seed(0)
    step_means = (torch.rand(reps, 2 * w, n, generator=g) < q).double().mean(-1)
    rule = mon.RewardPlateau(window=w)
    gains = [rule.statistics(_steps("train/reward", row.tolist()))[-1] for row in step_means]
    sd = float(torch.tensor(gains).std())
    expected = math.sqrt(2 * q * (1 - q) / (n * w))
    assert abs(sd / expected - 1) < 0.05, (sd, expected)  # MC error of an sd from 4000 draws: ~1.1%
    assert abs(float(torch.tensor(gains).mean())) < 3 * expected / math.sqrt(reps)


def test_throughput_drop_needs_patience_consecutive_steps():
    rule = mon.ThroughputDrop(drop=0.5, window=4, patience=2)
    vals = [100.0] * 4 + [40.0, 100.0, 40.0, 40.0, 40.0]
    alerts = mon.check_history(_steps("performance/tokens_per_sec", vals), [rule])
    # step 4 alone is one slow step; steps 6-7 are two in a row below 50 (median of 4 before = 100)
    assert [a.step for a in alerts] == [7]


def test_statistics_are_the_numbers_the_rules_compare():
    kl = mon.KLBlowup(factor=3.0, window=2, min_value=0.1, warmup_steps=0)
    stats = kl.statistics(_steps("train/kl_penalty", [0.2, 0.4, 0.9]))
    assert math.isnan(stats[0]) and math.isnan(stats[1]) and stats[2] == pytest.approx(3.0)
    ent = mon.EntropyCollapse(reference_steps=2)
    assert ent.statistics(_steps("train/approx_entropy", [2.0, 4.0, 0.3]))[2] == pytest.approx(0.1)
    plateau = mon.RewardPlateau(window=2)
    assert plateau.statistics(_steps("train/reward", [0.1, 0.3, 0.4, 0.6]))[3] == pytest.approx(0.3)
    tput = mon.ThroughputDrop(window=2, patience=2)
    assert tput.statistics(_steps("performance/tokens_per_sec", [100.0, 80.0, 30.0, 45.0]))[3] == \
        pytest.approx(0.5)
    assert (kl.threshold, ent.threshold, plateau.threshold, tput.threshold) == (3.0, 0.1, 0.05, 0.5)


@pytest.mark.parametrize("make", [
    lambda: mon.KLBlowup(factor=1.0), lambda: mon.KLBlowup(window=0), lambda: mon.KLBlowup(warmup_steps=-1),
    lambda: mon.EntropyCollapse(min_fraction=1.5),
    lambda: mon.RewardPlateau(min_improvement=-1), lambda: mon.ThroughputDrop(drop=1.0),
    lambda: mon.ThroughputDrop(patience=True), lambda: mon.NonFinite(metrics="train/loss"),
    lambda: mon.RewardPlateau(target=math.nan), lambda: mon.KLBlowup(metric=""),
])
def test_bad_thresholds_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_monitor_rejects_bad_input():
    with pytest.raises(TypeError):
        mon.Monitor(rules=["kl"])
    with pytest.raises(ValueError):
        mon.Monitor(rules=[mon.KLBlowup(), mon.KLBlowup()])
    with pytest.raises(TypeError):
        mon.Monitor().update([1.0])
    with pytest.raises(TypeError):
        mon.check_history("train/loss")


# --------------------------------------------------------------------------------------------------
# Recorded lab runs with injected faults
# --------------------------------------------------------------------------------------------------


class _NaNLossAt(ClippedPGLoss):
    """ClippedPGLoss whose returned loss is NaN at one call (one call per step here)."""

    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.at_call, self.calls = at_call, 0

    def __call__(self, **kwargs):
        loss, metrics = super().__call__(**kwargs)
        self.calls += 1
        return (loss * math.nan if self.calls == self.at_call else loss), metrics


def _perturb(step, metrics, policy):
    if step == FAULT_STEP - 1:  # the callback runs after a step: the next step sees the change
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _sharpen(step, metrics, policy):
    if step == FAULT_STEP - 1:
        with torch.no_grad():
            policy.ln_f.weight.mul_(8.0)


@pytest.fixture(scope="module")
def runs():
    previous = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    task = make_task("greater")

    def slow_sampler(step, history):
        if step >= FAULT_STEP:
            time.sleep(0.15)
        return task

    faults = {
        "clean": {},
        "non_finite": {"loss_fn": _NaNLossAt(FAULT_STEP + 1)},
        "kl_blowup": {"callback": _perturb},
        "entropy_collapse": {"callback": _sharpen},
        "reward_plateau": {"lr": 1e-7},
        "throughput_drop": {"prompt_sampler": slow_sampler},
    }
    out = {}
    try:
        for name, kw in faults.items():
            kw = dict(kw)
            callback, sampler = kw.pop("callback", None), kw.pop("prompt_sampler", None)
            cfg = SMALL.grpo_config(seed=0, num_prompts_per_step=8, num_generations_per_prompt=4,
                                    max_num_steps=STEPS, **kw)
            policy = TinyCausalLM(SMALL.policy, seed=0)
            out[name] = grpo_train(policy, None if sampler else task, cfg, callback=callback,
                                   prompt_sampler=sampler)
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])
    return out


def test_every_rule_is_silent_on_the_clean_run(runs):
    assert mon.check_history(runs["clean"]) == []


@pytest.mark.parametrize("fault", ["non_finite", "kl_blowup", "entropy_collapse", "reward_plateau",
                                   "throughput_drop"])
def test_each_rule_fires_on_its_fault(runs, fault):
    alerts = mon.check_history(runs[fault])
    mine = [a for a in alerts if a.rule == fault]
    assert mine, f"{fault} did not fire; alerts: {[str(a) for a in alerts]}"
    if fault != "reward_plateau":  # a plateau is a property of the whole run, not of one step
        assert mine[0].step >= FAULT_STEP
        assert mine[0].step <= FAULT_STEP + 5


def test_faulted_runs_agree_with_the_clean_run_before_the_fault(runs):
    """The fault is injected, not an accident: identical deterministic metrics before FAULT_STEP."""
    clean = runs["clean"].deterministic()[:FAULT_STEP]
    for fault in ("non_finite", "kl_blowup", "entropy_collapse", "throughput_drop"):
        assert runs[fault].deterministic()[:FAULT_STEP] == clean, fault


def test_monitor_as_callback_stops_the_run_on_a_critical_alert():
    task = make_task("greater")
    monitor = mon.Monitor([mon.NonFinite()], stop_on_critical=True)
    seen = []
    monitor.on_alert.append(seen.append)
    cfg = SMALL.grpo_config(seed=0, num_prompts_per_step=4, num_generations_per_prompt=4, max_num_steps=8,
                            loss_fn=_NaNLossAt(3))
    with torch.random.fork_rng():
        history = grpo_train(TinyCausalLM(SMALL.policy, seed=0), task, cfg, callback=monitor)
    assert history.stopped_reason == "callback"
    assert len(history) == 3 and [a.step for a in seen] == [2]
    assert monitor.fired("non_finite") == seen
