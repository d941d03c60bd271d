"""Tests of rlref.curriculum: hand-checked values, the gate rule, reproducibility, a short lab run with
each sampler (dynamic sampling included), and every validation error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlref.curriculum import (
    GatedCurriculum,
    MixtureSampler,
    generated_samples,
    resample_on_grid,
    zero_variance_probability,
)
from rlref.lab import VOCAB_SIZE, GRPOConfig, History, PolicyConfig, TinyCausalLM, grpo_train, make_task

LADDER = [make_task("greater", d, extra_tokens=1) for d in (1, 4, 8)]


def _policy(seed: int = 0) -> TinyCausalLM:
    cfg = PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    return TinyCausalLM(cfg, seed=seed)


def _history(accuracies) -> History:
    return History([{"lab/accuracy": a} for a in accuracies])


# -- zero_variance_probability ---------------------------------------------------------------------


def test_zero_variance_probability_hand_values():
    assert zero_variance_probability(0.5, 2) == pytest.approx(0.5)  # HH or TT out of 4
    assert zero_variance_probability(0.5, 8) == pytest.approx(2 / 256)
    assert zero_variance_probability(0.1, 3) == pytest.approx(0.001 + 0.729)
    assert zero_variance_probability(0.0, 8) == 1.0 and zero_variance_probability(1.0, 8) == 1.0
    assert np.allclose(zero_variance_probability([0.2, 0.8], 4), [0.2**4 + 0.8**4] * 2)


def test_zero_variance_probability_is_smallest_at_one_half_and_matches_simulation():
    p = np.linspace(0, 1, 101)
    z = zero_variance_probability(p, 8)
    assert p[np.argmin(z)] == pytest.approx(0.5)
    draws = np.random.default_rng(0).random((50_000, 4)) < 0.3
    simulated = np.mean(draws.all(1) | (~draws).all(1))
    assert simulated == pytest.approx(zero_variance_probability(0.3, 4), abs=0.01)


@pytest.mark.parametrize(("p", "G", "bad"), [(1.5, 4, "p"), (-0.1, 4, "p"), (math.nan, 4, "p"),
                                             (0.5, 0, "num_generations_per_prompt"),
                                             (0.5, 2.0, "num_generations_per_prompt")])
def test_zero_variance_probability_rejects_bad_arguments(p, G, bad):
    with pytest.raises(ValueError, match=bad):
        zero_variance_probability(p, G)


# -- GatedCurriculum -------------------------------------------------------------------------------


def test_gate_rule_hand_cases():
    gate = GatedCurriculum(LADDER, threshold=0.5, window=2)
    assert not gate.should_advance([])
    assert not gate.should_advance([0.9])  # fewer than `window` steps at this level
    assert gate.should_advance([0.4, 0.6])  # mean 0.5 >= 0.5
    assert not gate.should_advance([0.6, 0.4, 0.5, 0.4])  # last two: 0.45
    assert gate.should_advance([0.0, 0.0, 1.0, 0.0])  # last two: 0.5


def test_gated_curriculum_climbs_once_per_gate_never_back_and_stops_at_the_top():
    gate = GatedCurriculum(LADDER, threshold=0.5, window=2)
    accs = [0.1, 0.6, 0.6, 0.0, 0.9, 0.9, 0.0, 0.0, 1.0, 1.0]
    levels = []
    for step in range(len(accs)):
        levels.append(LADDER.index(gate(step, _history(accs[:step]))))
    # steps 0-2 on level 0; after steps 1-2 (0.6, 0.6) move up; steps 3-5 on level 1, then level 2 for good
    assert levels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert gate.level_at_step == levels


def test_gated_curriculum_repeats_the_level_within_a_step():
    gate = GatedCurriculum(LADDER, threshold=0.5, window=1)
    h = _history([1.0])
    assert gate(0, _history([])) is LADDER[0]
    assert gate(1, h) is LADDER[1]
    assert gate(1, h) is LADDER[1]  # a second generation batch of step 1 (dynamic sampling)
    assert gate.level_at_step == [0, 1]


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"tasks": []}, "tasks"), ({"tasks": LADDER[0]}, "tasks"),
    ({"tasks": [LADDER[0], "copy"]}, r"tasks\[1\]"),
    ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"threshold": True}, "threshold"),
    ({"window": 0}, "window"), ({"accuracy_key": ""}, "accuracy_key"),
])
def test_gated_curriculum_rejects_bad_arguments(kwargs, bad):
    args = {"tasks": LADDER, **kwargs}
    with pytest.raises((ValueError, TypeError), match=bad):
        GatedCurriculum(**args)


def test_gated_curriculum_rejects_skipped_steps_and_a_foreign_history():
    gate = GatedCurriculum(LADDER)
    with pytest.raises(ValueError, match="step"):
        gate(2, _history([0.0, 0.0]))
    with pytest.raises(ValueError, match="history"):
        gate(0, _history([0.0]))


# -- MixtureSampler --------------------------------------------------------------------------------


def test_mixture_sampler_frequencies_follow_the_weights_and_are_reproducible():
    mix = MixtureSampler(LADDER, num_prompts_per_step=10, weights=[3, 1, 0], seed=4)
    problems = [p for step in range(300) for p in mix(step, None)]
    assert len(problems) == 3000
    assert mix.levels_drawn[2] == 0
    assert mix.levels_drawn[0] / 3000 == pytest.approx(0.75, abs=0.03)
    assert {p.task.difficulty for p in problems} == {1, 4}
    again = MixtureSampler(LADDER, num_prompts_per_step=10, weights=[3, 1, 0], seed=4)
    assert [p.prompt for p in again(0, None)] == [p.prompt for p in problems[:10]]


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"tasks": []}, "tasks"), ({"num_prompts_per_step": 0}, "num_prompts_per_step"),
    ({"weights": [1, 1]}, "weights"), ({"weights": [0, 0, 0]}, "weights"),
    ({"weights": [1, -1, 1]}, "weights"),
    ({"seed": -1}, "seed"),
])
def test_mixture_sampler_rejects_bad_arguments(kwargs, bad):
    args = {"tasks": LADDER, "num_prompts_per_step": 4, **kwargs}
    with pytest.raises((ValueError, TypeError), match=bad):
        MixtureSampler(**args)


# -- generated_samples and resample_on_grid --------------------------------------------------------


def test_generated_samples_counts_every_generation_batch():
    plain = History([{}, {}, {}])
    assert generated_samples(plain, 4, 8).tolist() == [32, 64, 96]
    ds = History([{"lab/dynamic_sampling/gen_batches": b} for b in (3, 1, 2)])
    assert generated_samples(ds, 4, 8).tolist() == [96, 128, 192]


@pytest.mark.parametrize(("history", "P", "G", "bad"), [
    (History([{}]), 0, 8, "num_prompts_per_step"), (History([{}]), 4, -1, "num_generations_per_prompt"),
    (History([]), 4, 8, "history"),
    (History([{"lab/dynamic_sampling/gen_batches": 0.0}]), 4, 8, "gen_batches"),
])
def test_generated_samples_rejects_bad_arguments(history, P, G, bad):
    with pytest.raises(ValueError, match=bad):
        generated_samples(history, P, G)


def test_resample_on_grid_carries_the_last_value_forward():
    out = resample_on_grid([10, 20, 40], [0.1, 0.5, 0.9], [5, 10, 15, 20, 39, 40, 41])
    assert np.isnan(out[0]) and np.isnan(out[-1])
    assert out[1:-1].tolist() == [0.1, 0.1, 0.5, 0.5, 0.9]


@pytest.mark.parametrize(("x", "y", "grid", "bad"), [
    ([1, 2], [0.1], [1], "x and y"), ([], [], [1], "x and y"), ([2, 1], [0, 0], [1], "x must"),
    ([1, 1], [0, 0], [1], "x must"), ([1, 2], [0, 0], [[1]], "grid"),
])
def test_resample_on_grid_rejects_bad_arguments(x, y, grid, bad):
    with pytest.raises(ValueError, match=bad):
        resample_on_grid(x, y, grid)


# -- the lab -----------------------------------------------------------------------------------------


def test_samplers_drive_a_short_lab_run_with_and_without_dynamic_sampling():
    cfg = GRPOConfig(num_prompts_per_step=4, num_generations_per_prompt=4, max_num_steps=4, seed=0,
                     dynamic_sampling_max_gen_batches=50)
    gate = GatedCurriculum(LADDER, threshold=0.01, window=1)
    h = grpo_train(_policy(), None, cfg, prompt_sampler=gate)
    # greater at difficulty d has a prompt of d + 3 tokens: the logged length shows the level trained on
    expected = [LADDER[k].difficulty + 3 for k in gate.level_at_step]
    assert h.series("train/mean_prompt_length").tolist() == expected
    levels, acc = gate.level_at_step, h.series("lab/accuracy")
    assert levels[0] == 0 and levels[-1] > 0  # it did climb in 4 steps
    for step in range(1, len(levels)):  # window=1: move up iff the previous step passed the gate
        if levels[step - 1] < len(LADDER) - 1:
            assert (levels[step] == levels[step - 1] + 1) == (acc[step - 1] >= 0.01)

    mix = MixtureSampler(LADDER, num_prompts_per_step=4, seed=0)
    h_ds = grpo_train(_policy(), None, cfg, prompt_sampler=mix, use_dynamic_sampling=True)
    batches = h_ds.series("lab/dynamic_sampling/gen_batches")
    assert sum(mix.levels_drawn) == 4 * batches.sum()  # one sampler call per generation batch
    assert generated_samples(h_ds, 4, 4)[-1] == 16 * batches.sum()
    assert np.all(h_ds.series("lab/zero_std_frac") == 0.0)  # no zero-variance group is trained on
