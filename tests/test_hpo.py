"""Tests for rlref.hpo: NeMo RL override strings, TensorBoard read-back and study summaries."""

import math

import numpy as np
import optuna
import pytest

from rlref.hpo import (
    best_so_far,
    expected_accuracy,
    format_override,
    grpo_command,
    overrides_from_params,
    pareto_mask,
    pruning_savings,
    read_scalars,
)

KEY_MAP = {"lr": "policy.optimizer.kwargs.lr", "kl": "loss_fn.reference_policy_kl_penalty",
           "clip_high": "loss_fn.ratio_clip_max"}


def test_format_override_values():
    assert format_override("loss_fn.ratio_clip_max", 0.28) == "loss_fn.ratio_clip_max=0.28"
    assert format_override("policy.optimizer.kwargs.lr", 5e-6) == "policy.optimizer.kwargs.lr=5e-06"
    assert format_override("grpo.max_num_steps", 20) == "grpo.max_num_steps=20"
    assert format_override("logger.tensorboard_enabled", True) == "logger.tensorboard_enabled=true"
    assert format_override("loss_fn.ratio_clip_c", None) == "loss_fn.ratio_clip_c=null"
    assert format_override("a.b", [0.9, 0.999]) == "a.b=[0.9,0.999]"
    assert format_override("logger.log_dir", "logs/hpo/trial_3") == "logger.log_dir=logs/hpo/trial_3"
    assert format_override("logger.log_dir", "my logs") == "logger.log_dir='my logs'"
    assert format_override("x.y", 1, add=True) == "++x.y=1"


def test_float_override_round_trips_exactly():
    for v in (5e-6, 0.1 + 0.2, 1 / 3, 123456.789):
        assert float(format_override("k", v).split("=", 1)[1]) == v


@pytest.mark.parametrize("key", ["", "a..b", "1a", "a.b=", "a b", None])
def test_format_override_rejects_bad_keys(key):
    with pytest.raises(ValueError, match="override key"):
        format_override(key, 1)


def test_format_override_rejects_bad_values():
    with pytest.raises(ValueError, match="finite"):
        format_override("a", math.nan)
    with pytest.raises(TypeError, match="dict"):
        format_override("a", {"b": 1})


def test_overrides_from_trial_params_in_key_map_order():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = {"clip_high": trial.suggest_float("clip_high", 0.2, 0.4),
              "lr": trial.suggest_float("lr", 1e-6, 1e-4, log=True),
              "kl": trial.suggest_float("kl", 1e-3, 1e-1, log=True)}
    out = overrides_from_params(trial.params, KEY_MAP, fixed={"grpo.seed": 3, "new.key": True},
                                new_keys=["new.key"])
    assert out == [f"policy.optimizer.kwargs.lr={params['lr']!r}",
                   f"loss_fn.reference_policy_kl_penalty={params['kl']!r}",
                   f"loss_fn.ratio_clip_max={params['clip_high']!r}",
                   "grpo.seed=3", "++new.key=true"]


def test_overrides_from_params_rejects_unmapped_missing_and_duplicate():
    with pytest.raises(ValueError, match="without a config key"):
        overrides_from_params({"lr": 1.0, "kl": 1.0, "clip_high": 1.0, "typo": 1}, KEY_MAP)
    with pytest.raises(ValueError, match="missing"):
        overrides_from_params({"lr": 1.0}, KEY_MAP)
    with pytest.raises(ValueError, match="set twice"):
        overrides_from_params({"lr": 1.0, "kl": 1.0, "clip_high": 1.0}, KEY_MAP,
                              fixed={"loss_fn.ratio_clip_max": 0.2})


def test_grpo_command():
    cmd = grpo_command("examples/configs/grpo_math_1B.yaml", ["grpo.max_num_steps=5"])
    assert cmd == ["uv", "run", "python", "examples/run_grpo.py", "--config",
                   "examples/configs/grpo_math_1B.yaml", "grpo.max_num_steps=5"]
    with pytest.raises(ValueError, match="key=value"):
        grpo_command("c.yaml", ["--flag"])
    with pytest.raises(ValueError, match="config"):
        grpo_command("", [])


def test_read_scalars_round_trip(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run_dir = tmp_path / "exp_001" / "tensorboard"
    w = SummaryWriter(log_dir=str(run_dir))
    for step, value in [(1, 0.25), (2, 0.5), (3, 0.75)]:
        w.add_scalar("validation/accuracy", value, step)
        w.add_scalar("train/reward", 2 * value, step)
    w.close()
    assert read_scalars(tmp_path, "validation/accuracy") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert read_scalars(tmp_path, "train/reward")[-1] == (3, 1.5)
    with pytest.raises(KeyError, match="validation/accuracy"):
        read_scalars(tmp_path, "validation/missing")
    with pytest.raises(FileNotFoundError):
        read_scalars(tmp_path / "nowhere", "train/reward")


def test_best_so_far():
    np.testing.assert_array_equal(best_so_far([0.1, 0.3, 0.2, 0.5]), [0.1, 0.3, 0.3, 0.5])
    np.testing.assert_array_equal(best_so_far([3, 1, 2], "minimize"), [3, 1, 1])
    out = best_so_far([math.nan, 0.2, math.nan, 0.1])
    assert math.isnan(out[0]) and list(out[1:]) == [0.2, 0.2, 0.2]
    with pytest.raises(ValueError, match="direction"):
        best_so_far([1.0], "up")


def test_best_so_far_is_monotone_and_attained():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    b = best_so_far(y)
    assert np.all(np.diff(b) >= 0)
    assert all(b[t] in y[: t + 1] for t in range(y.size))


def test_pareto_mask_hand_example():
    # maximise reward, minimise KL
    pts = [[0.9, 1.0], [0.8, 0.5], [0.7, 0.6], [0.9, 1.0], [0.2, 0.1], [0.5, 0.1]]
    mask = pareto_mask(pts, ["maximize", "minimize"])
    assert mask.tolist() == [True, True, False, True, False, True]


def test_pareto_mask_matches_optuna_best_trials():
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    rng = np.random.default_rng(1)
    for _ in range(40):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        study.tell(t, [float(rng.integers(0, 6)), float(rng.integers(0, 6))])  # ties included
    pts = np.array([t.values for t in study.trials])
    mine = set(np.flatnonzero(pareto_mask(pts, ["maximize", "minimize"])).tolist())
    assert mine == {t.number for t in study.best_trials}


def test_pareto_mask_bad_input():
    with pytest.raises(ValueError, match="directions"):
        pareto_mask([[1, 2]], ["maximize"])
    with pytest.raises(ValueError, match="direction"):
        pareto_mask([[1, 2]], ["maximize", "down"])
    with pytest.raises(ValueError, match="non-empty"):
        pareto_mask([], ["maximize"])


def test_pruning_savings():
    s = pruning_savings([10, 3, 10, 5], full_steps=10)
    assert s["pruned"] == 2 and s["steps_run"] == 28 and s["steps_full"] == 40
    assert s["saved_fraction"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="in \\[0, 10\\]"):
        pruning_savings([11], 10)
    with pytest.raises(ValueError, match="full_steps"):
        pruning_savings([1], 0)


def _median_pruned_study():
    """A maximising study with MedianPruner(4 start-up trials, 2 warm-up steps) and four completed trials
    that reported 0.1, 0.2, 0.4 and 0.9 at every step 0-4."""
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2))
    for final in (0.1, 0.2, 0.4, 0.9):
        t = study.ask()
        for step in range(5):
            t.report(final, step)
        study.tell(t, final)
    return study


@pytest.mark.parametrize("value, pruned", [(0.29, True), (0.31, False)])
def test_median_pruner_rule(value, pruned):
    """Optuna's MedianPruner stops trial j at step t iff max_{s<=t} v_{j,s} < median of completed v_{i,t}."""
    study = _median_pruned_study()  # median of the completed trials at every step: (0.2 + 0.4) / 2 = 0.3
    t = study.ask()
    t.report(0.0, 1)
    assert not t.should_prune()  # step 1 < n_warmup_steps: never pruned, however bad
    t.report(value, 3)
    assert bool(t.should_prune()) == pruned


def test_best_of_noisy_trials_is_biased_up():
    """Winner's curse: E[max_i (mu_i + noise_i)] > max_i mu_i, so the best trial's value is optimistic."""
    rng = np.random.default_rng(0)
    mu = np.linspace(0.5, 0.6, 12)
    best = [best_so_far(mu + rng.normal(0, 0.05, mu.size))[-1] for _ in range(2000)]
    assert np.mean(best) > mu.max() + 0.02


def test_median_pruner_compares_the_best_value_so_far():
    """A trial that was above the median earlier is not pruned when its current value drops below it."""
    study = _median_pruned_study()  # median of the completed trials at every step: (0.2 + 0.4) / 2 = 0.3
    t = study.ask()
    t.report(0.5, 2)
    t.report(0.29, 3)  # below the median at step 3, but the best so far (0.5) is above it
    assert not t.should_prune()
    t2 = study.ask()
    t2.report(0.25, 2)
    t2.report(0.29, 3)  # best so far 0.29 < 0.3
    assert t2.should_prune()


def test_expected_accuracy_is_the_exact_mean_of_sampled_accuracy():
    """One forward pass gives what averaging many sampled evaluations estimates."""
    import torch

    from rlref.lab import VOCAB_SIZE, PolicyConfig, TinyCausalLM, evaluate, make_task

    policy = TinyCausalLM(PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=12), seed=3)
    for task in (make_task("last"), make_task("copy", 2)):  # one-token and two-token answers
        problems = task.sample_prompts(40, torch.Generator().manual_seed(0))
        exact = expected_accuracy(policy, problems)
        with torch.no_grad():  # by hand: product over answer tokens of softmax(logits) at each position
            manual = []
            for p in problems:
                ids = torch.tensor([list(p.prompt) + list(p.answer)])
                logp = torch.log_softmax(policy(ids)[0], -1)
                lp = [logp[len(p.prompt) - 1 + t, a] for t, a in enumerate(p.answer)]
                manual.append(float(sum(lp).exp()))
        assert exact == pytest.approx(np.mean(manual), rel=1e-5)
        gen = torch.Generator().manual_seed(1)
        sampled = np.mean([evaluate(policy, problems, temperature=1.0, generator=gen)["accuracy"]
                           for _ in range(400)])
        assert abs(sampled - exact) < 4 * math.sqrt(exact * (1 - exact) / (400 * 40)) + 1e-3


def test_expected_accuracy_rejects_what_it_cannot_compute():
    from rlref.lab import VOCAB_SIZE, PolicyConfig, TinyCausalLM, make_task

    policy = TinyCausalLM(PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=12), seed=0)
    with pytest.raises(ValueError, match="greater"):
        expected_accuracy(policy, make_task("greater").sample_prompts(2))
    with pytest.raises(ValueError, match="extra_tokens"):
        expected_accuracy(policy, make_task("last", extra_tokens=1).sample_prompts(2))
    with pytest.raises(ValueError, match="empty"):
        expected_accuracy(policy, [])
    with pytest.raises(TypeError, match="Problems"):
        expected_accuracy(policy, [(1, 2, 3)])
