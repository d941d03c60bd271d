"""Training loops: global normalisation across micro-batches, determinism, learning, NaN handling, hooks."""

import copy
import math
import time

import numpy as np
import pytest
import torch

from rlref import advantages as adv
from rlref.lab import (
    SMALL,
    VOCAB_SIZE,
    DPOConfig,
    GRPOConfig,
    History,
    PolicyConfig,
    SFTConfig,
    TinyCausalLM,
    accumulate_gradients,
    dpo_train,
    grpo_train,
    lab_scale,
    make_preference_pairs,
    make_reference,
    make_task,
    rollout,
    sequence_logprobs,
    sft_train,
)
from rlref.lab.train import _rolled_logprobs
from rlref.losses import ClippedPGLoss, DPOLoss, LossInputType, LossType

TINY = PolicyConfig(VOCAB_SIZE, d_model=32, n_layers=1, n_heads=4, max_seq_len=24)


def _grpo_batch():
    model = TinyCausalLM(TINY, seed=0)
    task = make_task("copy", 2, extra_tokens=1)
    b = rollout(model, task.sample_prompts(6, torch.Generator().manual_seed(0)), 4, 1.0,
                torch.Generator().manual_seed(1))
    b.rewards = torch.linspace(0, 1, len(b))  # varied rewards so every group has a signal
    prev = sequence_logprobs(model, b.input_ids)
    data = b.data()
    data.update(prev_logprobs=prev, reference_policy_logprobs=prev - 0.1,
                advantages=adv.grpo_advantages(b.prompt_ids, b.rewards, b.token_mask))
    return model, b.input_ids, data


def _grads(model, loss_fn, ids, data, mb, rows_per_sample=1):
    m = copy.deepcopy(model)
    metrics = accumulate_gradients(m, loss_fn, ids, data, mb, rows_per_sample=rows_per_sample)
    return torch.cat([p.grad.flatten() for p in m.parameters()]), metrics


@pytest.mark.parametrize("token_level_loss", [True, False])
def test_microbatched_gradients_equal_full_batch_gradients(token_level_loss):
    model, ids, data = _grpo_batch()
    loss_fn = ClippedPGLoss(token_level_loss=token_level_loss, reference_policy_kl_penalty=0.05)
    full, m_full = _grads(model, loss_fn, ids, data, None)
    micro, m_micro = _grads(model, loss_fn, ids, data, 5)  # 24 rows -> 5,5,5,5,4
    assert m_micro["lab/num_microbatches"] == 5 and m_full["lab/num_microbatches"] == 1
    assert torch.allclose(micro, full, rtol=1e-4, atol=1e-7)
    assert m_micro["loss"] == pytest.approx(m_full["loss"], rel=1e-5, abs=1e-7)
    assert m_micro["probs_ratio_max"] == pytest.approx(m_full["probs_ratio_max"], rel=1e-6)
    assert m_micro["global_valid_toks"] == float((data["token_mask"][:, 1:]).sum())


def test_dpo_microbatches_split_on_pairs_and_match_the_full_batch():
    model = TinyCausalLM(TINY, seed=0)
    problems = make_task("reverse", 2).sample_prompts(6, torch.Generator().manual_seed(0))
    ids, data = make_preference_pairs(problems, torch.Generator().manual_seed(1))
    assert torch.all(data["token_mask"][0::2].sum(1) == 3) and not torch.equal(ids[0::2], ids[1::2])
    data["reference_policy_logprobs"] = _rolled_logprobs(make_reference(model), ids) - 0.05
    full, _ = _grads(model, DPOLoss(), ids, data, None, rows_per_sample=2)
    micro, m = _grads(model, DPOLoss(), ids, data, 2, rows_per_sample=2)
    assert m["lab/num_microbatches"] == 3
    assert torch.allclose(micro, full, rtol=1e-4, atol=1e-7)


def test_logit_input_losses_get_logits():
    class MeanLogitLoss:
        loss_type = LossType.TOKEN_LEVEL
        input_type = LossInputType.LOGIT

        def __call__(self, logits, data, global_valid_seqs, global_valid_toks):
            loss = logits.mean() * 0 + logits[:, :-1].logsumexp(-1).mul(data["token_mask"][:, 1:]).sum()
            return loss / global_valid_toks, {"loss": float(loss.detach() / global_valid_toks)}

    model, ids, data = _grpo_batch()
    full, m = _grads(model, MeanLogitLoss(), ids, data, None)
    micro, _ = _grads(model, MeanLogitLoss(), ids, data, 7)
    assert torch.allclose(micro, full, rtol=1e-4, atol=1e-7) and math.isfinite(m["loss"])


def _small_grpo(steps=3, **kw):
    policy = TinyCausalLM(TINY, seed=0)
    cfg = GRPOConfig(num_prompts_per_step=4, num_generations_per_prompt=4, max_num_steps=steps, **kw)
    return policy, cfg


def test_two_identical_runs_give_identical_histories():
    runs = []
    for _ in range(2):
        policy, cfg = _small_grpo(steps=4, train_micro_batch_size=6, generation_dtype=torch.bfloat16)
        runs.append(grpo_train(policy, make_task("copy", 1), cfg))
    assert runs[0].deterministic() == runs[1].deterministic()
    other, cfg = _small_grpo(steps=4, seed=1)
    assert grpo_train(other, make_task("copy", 1), cfg).deterministic() != runs[0].deterministic()
    step = runs[0][-1]
    for key in ("train/loss", "train/reward", "train/grad_norm", "train/lr", "train/probs_ratio",
                "train/kl_penalty", "train/approx_entropy", "train/token_mult_prob_error",
                "train/advantages/mean", "timing/train/generation",
                "timing/train/policy_and_reference_logprobs",
                "timing/train/policy_training", "timing/train/total_step_time", "performance/tokens_per_sec",
                "lab/accuracy", "lab/entropy", "lab/reward/correct", "lab/nonfinite"):
        assert key in step, key


def test_grpo_learns_the_easiest_task():
    policy = TinyCausalLM(SMALL.policy, seed=0)
    t0 = time.process_time()
    h = grpo_train(policy, make_task("greater"), SMALL.grpo_config(seed=0))
    cpu = time.process_time() - t0
    first, last = h.mean("train/reward", first=5), h.mean("train/reward", last=5)
    assert last >= 0.7 and last > first + 0.4, (first, last)
    assert h.mean("lab/entropy", last=5) < h.mean("lab/entropy", first=5)
    assert h.stopped_reason == "max_num_steps" and len(h) == SMALL.max_num_steps
    assert cpu < 60, cpu


def test_generation_precision_shows_in_the_mismatch_metrics():
    fp32 = grpo_train(*_small_grpo(steps=1)[:1], make_task("copy", 2), _small_grpo(steps=1)[1])
    policy, cfg = _small_grpo(steps=1, generation_dtype=torch.bfloat16)
    bf16 = grpo_train(policy, make_task("copy", 2), cfg)
    assert fp32[0]["train/token_mult_prob_error"] == pytest.approx(1.0, abs=1e-5)
    assert fp32[0]["train/probs_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert bf16[0]["train/token_mult_prob_error"] > 1.0 + 1e-4
    assert bf16[0]["train/gen_kl_error"] > 1e-7


def test_second_global_batch_is_off_policy():
    policy, cfg = _small_grpo(steps=1, train_global_batch_size=8)
    h = grpo_train(policy, make_task("greater"), cfg)
    assert h[0]["lab/optimizer_steps"] == 2
    assert h[0]["train/probs_ratio_max"] > 1.0 + 1e-4 or h[0]["train/probs_ratio_min"] < 1.0 - 1e-4


class _NaNAt:
    """ClippedPG loss that turns NaN on one call (a LossFunction-protocol object)."""

    def __init__(self, bad_call):
        self.inner, self.calls, self.bad_call = ClippedPGLoss(), 0, bad_call
        self.loss_type, self.input_type = self.inner.loss_type, self.inner.input_type

    def __call__(self, **kw):
        loss, metrics = self.inner(**kw)
        self.calls += 1
        if self.calls == self.bad_call:
            loss = loss * float("nan")
            metrics["loss"] = float("nan")
        return loss, metrics


def _checksums(mode):
    sums = []
    policy, cfg = _small_grpo(steps=4, loss_fn=_NaNAt(bad_call=2), on_nonfinite=mode)

    def record(step, metrics, p):
        sums.append(float(sum(x.detach().sum() for x in p.parameters())))

    h = grpo_train(policy, make_task("greater"), cfg, callback=record)
    return h, sums


def test_nonfinite_step_is_skipped():
    h, sums = _checksums("skip")
    assert h.nonfinite_steps == [1] and h[1]["lab/skipped_step"] == 1.0 and len(h) == 4
    assert sums[1] == sums[0] and sums[2] != sums[1] and all(math.isfinite(s) for s in sums)


def test_nonfinite_step_stops_the_run():
    h, sums = _checksums("stop")
    assert len(h) == 2 and h.stopped_reason == "nonfinite" and h.nonfinite_steps == [1]


def test_nonfinite_step_taken_like_nemo_rl_dtensor_warns_and_corrupts_weights():
    with pytest.warns(RuntimeWarning, match="stepping anyway"):
        h, sums = _checksums("step")
    assert h[1]["lab/skipped_step"] == 0.0 and math.isnan(sums[1])


def test_prompt_sampler_and_callback_hooks():
    seen = []

    def sampler(step, history):
        seen.append((step, len(history)))
        task = make_task("copy", 1 if step < 2 else 3)
        return task if step < 2 else task.sample_prompts(4, torch.Generator().manual_seed(step))

    policy, cfg = _small_grpo(steps=5)
    h = grpo_train(policy, None, cfg, prompt_sampler=sampler, callback=lambda step, m, p: step == 3)
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert h.series("train/mean_prompt_length").tolist() == [4.0, 4.0, 6.0, 6.0]
    assert h.stopped_reason == "callback"


def test_gdpo_and_reinforce_plus_plus_estimators_run():
    task = make_task("copy", 1, reward_components=("reward/correct", "reward/partial", "reward/brevity"),
                     extra_tokens=1)
    policy, cfg = _small_grpo(steps=2, adv_estimator="gdpo", reward_weights=[1.0, 0.5, 0.5])
    h = grpo_train(policy, task, cfg)
    assert {"lab/reward/correct", "lab/reward/partial", "lab/reward/brevity"} <= set(h.keys())
    assert h[0]["train/reward"] == pytest.approx(
        h[0]["lab/reward/correct"] + h[0]["lab/reward/partial"] + h[0]["lab/reward/brevity"], abs=1e-6)
    policy, cfg = _small_grpo(steps=2, adv_estimator="reinforce_plus_plus",
                              loss_fn={"use_kl_in_reward": True, "reference_policy_kl_penalty": 0.1})
    h = grpo_train(policy, make_task("copy", 1), cfg)
    assert h[1]["train/kl_penalty"] == 0.0  # the KL moved into the reward
    with pytest.raises(ValueError, match="reward_weights"):
        grpo_train(*_small_grpo(steps=1, adv_estimator="gdpo", reward_weights=[1.0])[::1][:1], task,
                   _small_grpo(steps=1, adv_estimator="gdpo", reward_weights=[1.0])[1])


def test_dynamic_sampling_keeps_only_groups_with_reward_variance():
    policy, cfg = _small_grpo(steps=3, use_dynamic_sampling=True)
    h = grpo_train(policy, make_task("greater"), cfg)
    assert h.series("lab/zero_std_frac").tolist() == [0.0, 0.0, 0.0]
    assert all(g >= 1 for g in h.series("lab/dynamic_sampling/gen_batches"))
    policy, cfg = _small_grpo(steps=1, use_dynamic_sampling=True, dynamic_sampling_max_gen_batches=2)
    # reward always 0: no group survives; like NeMo RL, it gives up after max + 1 generation batches
    with pytest.raises(RuntimeError, match="after 3 generation batches .dynamic_sampling_max_gen_batches"):
        grpo_train(policy, make_task("copy", 4), cfg)


def test_sft_and_dpo_decrease_their_loss():
    cfg = SFTConfig(max_num_steps=15, train_global_batch_size=16, lr=1e-2, eval_period=14,
                    eval_num_prompts=16)
    h = sft_train(TinyCausalLM(TINY, seed=0), make_task("copy", 2), cfg)
    assert h.mean("train/loss", last=3) < 0.7 * h.mean("train/loss", first=3)
    assert h[0]["train/num_unmasked_tokens"] == 16 * 3  # two answer digits + EOS; the prompt is masked
    assert (~np.isnan(h.series("lab/eval_accuracy"))).nonzero()[0].tolist() == [0, 14]
    h = dpo_train(TinyCausalLM(TINY, seed=0), make_task("greater"),
                  DPOConfig(max_num_steps=15, train_global_batch_size=16, lr=1e-2))
    assert h[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert h.mean("train/loss", last=3) < h.mean("train/loss", first=3) - 0.1
    assert h[-1]["train/rewards_chosen_mean"] > h[-1]["train/rewards_rejected_mean"]
    assert h[-1]["train/accuracy"] >= 0.9


def test_history_helpers_and_scale_presets():
    h = History([{"a": 1.0}, {"a": 3.0, "b": 2.0}, {"a": 5.0, "timing/x": 0.1}])
    assert h.series("a").tolist() == [1.0, 3.0, 5.0]
    assert math.isnan(h.series("b")[0]) and h.mean("a", last=2) == 4.0 and h.mean("a", first=1) == 1.0
    assert list(h.to_frame()) == ["step", "a", "b", "timing/x"]
    assert h.deterministic()[2] == {"a": 5.0}
    with pytest.raises(KeyError, match="no step"):
        h.series("c")
    assert lab_scale("small") is SMALL and lab_scale("full").policy.d_model > SMALL.policy.d_model
    assert SMALL.grpo_config(lr=1e-3).num_generations_per_prompt == SMALL.num_generations_per_prompt
    with pytest.raises(ValueError, match="scale"):
        lab_scale("medium")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_prompts_per_step": 0}, ValueError, "num_prompts_per_step"),
        ({"adv_estimator": "ppo"}, ValueError, "adv_estimator"),
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"normalize_rewards": 1}, TypeError, "normalize_rewards"),
        ({"generation_dtype": "bf16"}, TypeError, "generation_dtype"),
        ({"reward_weights": [1.0, 2.0]}, ValueError, "gdpo"),
        ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm"),
    ],
)
def test_bad_grpo_config_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        GRPOConfig(**kwargs)


def test_bad_train_arguments_raise():
    policy = TinyCausalLM(TINY, seed=0)
    with pytest.raises(TypeError, match="loss_fn"):
        grpo_train(policy, make_task("copy"), GRPOConfig(loss_fn=3, max_num_steps=1))
    with pytest.raises(ValueError, match="task or a prompt_sampler"):
        grpo_train(policy, None, GRPOConfig(max_num_steps=1))
    with pytest.raises(TypeError, match="task"):
        sft_train(policy, "copy")
    with pytest.raises(TypeError, match="prompt_sampler"):
        grpo_train(policy, None, GRPOConfig(max_num_steps=1), prompt_sampler=lambda s, h: "copy")


def test_counts_and_generation_throughput_are_defined_as_in_nemo_rl():
    # 16 samples per step in 2 global batches of 8: NeMo RL logs the mean count per optimizer step
    # (grpo.py:3480-3489) and divides the step's prompt+response tokens by generation time (utils.py:818-822)
    policy, cfg = _small_grpo(steps=2, train_global_batch_size=8)
    h = grpo_train(policy, make_task("copy", 1), cfg)
    for step in h:
        assert step["lab/optimizer_steps"] == 2.0
        assert step["train/global_valid_seqs"] == 8.0
        assert step["performance/generation_tokens_per_sec"] == pytest.approx(
            step["train/total_num_tokens"] / step["timing/train/generation"], rel=1e-12
        )


# -- prompt splits: the training loops draw training prompts only ---------------------------------


def _spy(monkeypatch, name):
    """Record every problem passed to ``rlref.lab.train.<name>`` (its first list argument)."""
    import rlref.lab.train as train_module

    seen, real = [], getattr(train_module, name)

    def spy(*args, **kwargs):
        seen.extend(next(a for a in args if isinstance(a, list)))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, name, spy)
    return seen


@pytest.mark.parametrize("sampler", [None, "mixture", "gated"])
def test_grpo_sees_training_prompts_only(monkeypatch, sampler):
    from rlref.curriculum import GatedCurriculum, MixtureSampler

    seen = _spy(monkeypatch, "rollout")
    task = make_task("last", 3)
    levels = [make_task("last", 2), make_task("pick", 2), task]
    prompt_sampler = {None: None, "mixture": MixtureSampler(levels, 16, seed=0),
                      "gated": GatedCurriculum(levels, threshold=1e-6, window=1)}[sampler]
    policy = TinyCausalLM(TINY, seed=0)
    cfg = GRPOConfig(num_prompts_per_step=16, num_generations_per_prompt=2, max_num_steps=6)
    grpo_train(policy, task if sampler is None else None, cfg, prompt_sampler=prompt_sampler)
    assert len(seen) == 6 * 16
    assert not any(p.task.is_held_out(p) for p in seen)
    held = {p.prompt for t in levels for p in t.held_out_problems()}
    assert not held & {p.prompt for p in seen}
    if sampler is not None:  # every level was drawn from
        assert {p.task.name + str(p.task.difficulty) for p in seen} >= {"last2", "pick2"}


@pytest.mark.parametrize("algorithm", ["sft", "dpo"])
def test_supervised_loops_train_on_training_prompts_and_evaluate_on_held_out_ones(monkeypatch, algorithm):
    batches = _spy(monkeypatch, "make_sft_batch" if algorithm == "sft" else "make_preference_pairs")
    evaluated = _spy(monkeypatch, "evaluate")
    task = make_task("pick", 3)
    policy = TinyCausalLM(TINY, seed=0)
    config = (SFTConfig if algorithm == "sft" else DPOConfig)(
        max_num_steps=4, train_global_batch_size=32, eval_period=2, eval_num_prompts=40)
    (sft_train if algorithm == "sft" else dpo_train)(policy, task, config)
    assert len(batches) == 4 * 32 and not any(task.is_held_out(p) for p in batches)
    assert len(evaluated) == 3 * 40 and all(task.is_held_out(p) for p in evaluated)


def test_evaluate_on_held_out_problems_rolls_out_exactly_those(monkeypatch):
    from rlref.lab import evaluate

    seen = _spy(monkeypatch, "rollout")
    task = make_task("last", 3)
    held = task.held_out_problems()
    out = evaluate(TinyCausalLM(TINY, seed=0), held)
    assert seen == held and all(task.is_held_out(p) for p in seen)
    assert 0.0 <= out["accuracy"] <= 1.0


def test_grpo_learns_last_and_generalises_to_held_out_prompts():
    # `last` has no constant optimum (every constant scores 0.1, like a random digit): a policy that
    # answers held-out prompts (contexts never trained on) well above 0.1 has learned the rule.
    from rlref.lab import evaluate

    task = make_task("last", 3)
    assert task.constant_policy_score() == task.uniform_policy_score() == pytest.approx(0.1)
    policy = TinyCausalLM(TINY, seed=0)
    h = grpo_train(policy, task, GRPOConfig(num_prompts_per_step=16, num_generations_per_prompt=8,
                                            max_num_steps=100, seed=0))
    assert h.mean("train/reward", first=5) < 0.15 < 0.5 < h.mean("train/reward", last=5)
    assert evaluate(policy, task.held_out_problems())["accuracy"] > 0.5
