"""Tests of rlref.multi_objective: hand-computed values, the lab's sum, the balancer's rule, a short
lab run, and every validation error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlref.lab import (
    EOS_ID,
    VOCAB_SIZE,
    GRPOConfig,
    PolicyConfig,
    TinyCausalLM,
    grpo_train,
    make_task,
    rollout,
)
from rlref.multi_objective import ComponentLog, TargetWeightBalancer, WeightedRewardTask, weighted_sum

COMPS = ("reward/correct", "reward/brevity")
W1 = {"reward/correct": 1.0, "reward/brevity": 1.0}


def _base(**kw):
    return make_task("last", reward_components=COMPS, extra_tokens=1, **kw)


def test_weighted_sum_hand_values():
    comps = {"reward/correct": torch.tensor([1.0, 0.0, 0.0]), "reward/brevity": torch.tensor([0.5, 1.0, 0.0])}
    out = weighted_sum(comps, {"reward/correct": 1.0, "reward/brevity": 0.25})
    assert torch.allclose(out, torch.tensor([1.125, 0.25, 0.0]))
    assert torch.allclose(weighted_sum(comps, W1), torch.tensor([1.5, 1.0, 0.0]))  # NeMo RL's sum
    assert torch.allclose(weighted_sum(comps, {"reward/correct": 2.0, "reward/brevity": 0.0}),
                          torch.tensor([2.0, 0.0, 0.0]))


def test_weighted_sum_validation_names_the_argument():
    comps = {"reward/correct": torch.ones(3), "reward/brevity": torch.ones(3)}
    with pytest.raises(ValueError, match="components"):
        weighted_sum({}, W1)
    with pytest.raises(ValueError, match="missing \\['reward/brevity'\\]"):
        weighted_sum(comps, {"reward/correct": 1.0})
    with pytest.raises(ValueError, match="unknown \\['reward/format'\\]"):
        weighted_sum(comps, {**W1, "reward/format": 1.0})
    for bad in (-0.1, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="weights\\['reward/brevity'\\]"):
            weighted_sum(comps, {"reward/correct": 1.0, "reward/brevity": bad})
    with pytest.raises(TypeError, match="weights must be a dict"):
        weighted_sum(comps, [1.0, 1.0])
    with pytest.raises(ValueError, match="different lengths"):
        weighted_sum({"reward/correct": torch.ones(3), "reward/brevity": torch.ones(2)}, W1)
    with pytest.raises(ValueError, match="1-D tensor"):
        weighted_sum({"reward/correct": torch.ones(3, 1), "reward/brevity": torch.ones(3)}, W1)


def test_weighted_task_scales_components_and_keeps_raw_means():
    base = _base()
    task = WeightedRewardTask(base, {"reward/correct": 1.0, "reward/brevity": 0.25})
    problem = task.sample_prompts(1, torch.Generator().manual_seed(0))[0]
    same = base.sample_prompts(1, torch.Generator().manual_seed(0))[0]
    assert problem.task is task and problem.prompt == same.prompt
    assert task.max_new_tokens == base.max_new_tokens == 2 and task.prompt_length == base.prompt_length
    correct = [*problem.answer, EOS_ID]
    assert task.rewards(problem, correct) == {"reward/correct": 1.0, "reward/brevity": 0.125}
    assert task.rewards(problem, [EOS_ID]) == {"reward/correct": 0.0, "reward/brevity": 0.25}
    assert task.take_raw_means() == {"reward/correct": 0.5, "reward/brevity": 0.75}  # unweighted
    with pytest.raises(RuntimeError, match="no responses"):
        task.take_raw_means()
    task.set_weights({"reward/correct": 1.0, "reward/brevity": 0.0})
    assert task.rewards(problem, [EOS_ID]) == {"reward/correct": 0.0, "reward/brevity": 0.0}


def test_weighted_task_keeps_the_base_split():
    base = _base()
    task = WeightedRewardTask(base, W1)
    assert task.held_out_fraction == base.held_out_fraction > 0
    train = task.sample_prompts(16, torch.Generator().manual_seed(0))
    held = task.sample_prompts(16, torch.Generator().manual_seed(0), split="held_out")
    assert not any(task.is_held_out(p) for p in train) and all(task.is_held_out(p) for p in held)
    same = base.sample_prompts(16, torch.Generator().manual_seed(0))
    assert [p.prompt for p in train] == [p.prompt for p in same]
    assert all(p.task is task for p in train + held)


def test_batched_training_with_weighted_tasks_matches_sequential():
    """One WeightedRewardTask and ComponentLog per run in grpo_train_seeds logs what grpo_train logs."""
    from rlref.lab import grpo_train_seeds

    cfg = PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    weights = [0.0, 0.5, 1.0]

    def make(w):
        task = WeightedRewardTask(_base(), {"reward/correct": 1.0, "reward/brevity": w})
        return task, ComponentLog(task)

    runs = [make(w) for w in weights]
    configs = [GRPOConfig(num_prompts_per_step=4, num_generations_per_prompt=4, max_num_steps=3, seed=s)
               for s in range(len(weights))]
    grpo_train_seeds([TinyCausalLM(cfg, seed=s) for s in range(len(weights))], [t for t, _ in runs], configs,
                     callback=[lg for _, lg in runs])
    for (w, (_, lg)), c in zip(zip(weights, runs, strict=True), configs, strict=True):
        task, ref = make(w)
        grpo_train(TinyCausalLM(cfg, seed=c.seed), task, c, callback=ref)
        for key in ("raw/reward/correct", "raw/reward/brevity", "weight/reward/brevity"):
            np.testing.assert_allclose(lg.series(key), ref.series(key), atol=1e-6)


def test_lab_total_reward_is_the_weighted_sum():
    task = WeightedRewardTask(_base(), {"reward/correct": 1.0, "reward/brevity": 0.25})
    policy = TinyCausalLM(PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=16), seed=0)
    batch = rollout(policy, task.sample_prompts(8, torch.Generator().manual_seed(1)), 4,
                    generator=torch.Generator().manual_seed(2))
    raw = task.take_raw_means()
    comps = {k: v / (0.25 if k == "reward/brevity" else 1.0) for k, v in batch.reward_components.items()}
    assert torch.allclose(batch.rewards, weighted_sum(comps, {"reward/correct": 1.0, "reward/brevity": 0.25}))
    for k in COMPS:
        assert math.isclose(raw[k], float(comps[k].mean()), rel_tol=1e-6)
    assert torch.equal(batch.correct, comps["reward/correct"])


def test_weighted_task_validation():
    with pytest.raises(TypeError, match="base must be"):
        WeightedRewardTask("greater", W1)
    with pytest.raises(TypeError, match="base must be"):
        WeightedRewardTask(WeightedRewardTask(_base(), W1), W1)
    with pytest.raises(ValueError, match="missing"):
        WeightedRewardTask(_base(), {"reward/correct": 1.0})
    task = WeightedRewardTask(_base(), W1)
    with pytest.raises(ValueError, match="weights\\['reward/correct'\\]"):
        task.set_weights({"reward/correct": -1.0, "reward/brevity": 1.0})
    assert task.weights == W1  # unchanged after a rejected update


def test_component_log_records_raw_means_and_weights():
    task = WeightedRewardTask(_base(), {"reward/correct": 1.0, "reward/brevity": 0.5})
    log = ComponentLog(task)
    problem = task.sample_prompts(1, torch.Generator().manual_seed(0))[0]
    task.rewards(problem, [EOS_ID])
    assert log(0, {}) is False
    assert log.rows == [{"raw/reward/correct": 0.0, "raw/reward/brevity": 1.0,
                         "weight/reward/correct": 1.0, "weight/reward/brevity": 0.5}]
    np.testing.assert_array_equal(log.series("raw/reward/brevity"), [1.0])
    with pytest.raises(KeyError, match="raw/reward/format"):
        log.series("raw/reward/format")
    with pytest.raises(TypeError, match="WeightedRewardTask"):
        ComponentLog(_base())


def test_balancer_rule_by_hand():
    task = WeightedRewardTask(_base(), {"reward/correct": 1.0, "reward/brevity": 0.0})
    bal = TargetWeightBalancer(task, "reward/brevity", "reward/correct", target=0.8, lr=1.0, beta=0.5,
                               max_weight=1.0)
    assert bal.update(0.5) == 0.0  # e = 0.5: w = clip(0 + (0.5 - 0.8)) = 0
    assert math.isclose(bal.update(1.0), 0.0)  # e = 0.75: still below target
    assert math.isclose(bal.update(1.0), 0.075)  # e = 0.875: w = 0 + 0.075
    assert math.isclose(bal.update(1.0), 0.075 + 0.1375)  # e = 0.9375
    assert math.isclose(task.weights["reward/brevity"], 0.2125)
    for _ in range(20):
        bal.update(1.0)
    assert task.weights["reward/brevity"] == 1.0  # capped at max_weight
    assert task.weights["reward/correct"] == 1.0  # the guard's weight is never touched
    for _ in range(40):
        bal.update(0.0)
    assert task.weights["reward/brevity"] == 0.0  # falls back to 0 when the guard fails


def test_balancer_validation_names_the_argument():
    task = WeightedRewardTask(_base(), W1)
    ok = dict(component="reward/brevity", guard="reward/correct", target=0.8)
    with pytest.raises(ValueError, match="component"):
        TargetWeightBalancer(task, **{**ok, "component": "reward/format"})
    with pytest.raises(ValueError, match="guard"):
        TargetWeightBalancer(task, **{**ok, "guard": "reward/brevity"})
    with pytest.raises(ValueError, match="target"):
        TargetWeightBalancer(task, **{**ok, "target": 1.5})
    with pytest.raises(ValueError, match="beta"):
        TargetWeightBalancer(task, **ok, beta=-0.1)
    with pytest.raises(ValueError, match="lr"):
        TargetWeightBalancer(task, **ok, lr=0.0)
    with pytest.raises(ValueError, match="max_weight"):
        TargetWeightBalancer(task, **ok, max_weight=math.inf)


def test_short_lab_run_with_the_balancer():
    # an untrained policy on `last` is rarely correct, so the guard here is brevity (always > 0 at
    # the start) and the balanced weight is correctness's: with target 0 it can only rise
    task = WeightedRewardTask(_base(), {"reward/correct": 0.0, "reward/brevity": 1.0})
    bal = TargetWeightBalancer(task, "reward/correct", "reward/brevity", target=0.0, lr=0.5)
    policy = TinyCausalLM(PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=16), seed=0)
    hist = grpo_train(policy, task, GRPOConfig(num_prompts_per_step=4, num_generations_per_prompt=4,
                                               max_num_steps=3, seed=0), callback=bal)
    assert len(hist) == 3 and len(bal.rows) == 3
    w = bal.series("weight/reward/correct")
    assert w[0] == 0.0 and (np.diff(w) >= 0).all() and w[-1] > 0  # target 0: the weight only rises
    assert (bal.series("weight/reward/brevity") == 1.0).all()  # the guard's weight is never touched
    # the logged weighted component equals the raw one times the weight in effect at that step
    np.testing.assert_allclose(hist.series("lab/reward/correct"), bal.series("raw/reward/correct") * w,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(hist.series("lab/reward/brevity"), bal.series("raw/reward/brevity"),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(hist.series("lab/accuracy"), bal.series("raw/reward/correct"), rtol=1e-6)


def test_gdpo_weights_matter_only_through_their_ratios():
    """GDPO re-normalises the weighted sum over the batch, so scaling every weight by c > 0 changes
    nothing (the page's GDPO equation); changing their ratio does."""
    from rlref import advantages as adv

    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.arange(4).repeat_interleave(4)[:, None]
    comps = {"reward/brevity": torch.rand(16, generator=g, dtype=torch.float64),
             "reward/correct": (torch.rand(16, generator=g) > 0.5).to(torch.float64)}
    mask = torch.ones(16, 3)
    a1 = adv.gdpo_advantages(prompt_ids, comps, mask, reward_weights=[0.25, 1.0])
    a2 = adv.gdpo_advantages(prompt_ids, comps, mask, reward_weights=[0.5, 2.0])
    a3 = adv.gdpo_advantages(prompt_ids, comps, mask, reward_weights=[1.0, 1.0])
    assert torch.allclose(a1, a2, atol=1e-12)
    assert not torch.allclose(a1, a3, atol=1e-3)
