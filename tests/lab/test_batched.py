"""grpo_train_seeds: every seed of a stack follows its own sequential grpo_train run.

Tolerance. The stacked forward uses batched matrix products and an unfused LayerNorm affine, which
round differently from the per-seed kernels in the last bits (~1e-7 relative per op), so the runs are
not bit-identical. Logged metrics agree to ``rtol=1e-4, atol=1e-5`` over the steps tested here (the
observed worst case is ~1e-6 relative). Parameters agree to ``atol=1e-4``: Adam divides by
sqrt(second moment), so an element whose gradient is at noise level can move by up to ``lr`` (3e-3)
per step whatever its sign, and a 1e-7 difference in such a gradient changes its update by a visible
fraction of ``lr``; 1e-4 is 3% of one step. A sampled token can only differ on a near-tie of the
Gumbel-max (a gap below ~1e-6), which these runs do not meet; if one did, every later metric would
differ by far more than the tolerance and the test would fail loudly rather than pass by accident.
"""

import contextlib
import math

import numpy as np
import pytest
import torch

from rlref.curriculum import MixtureSampler
from rlref.custom_losses import EntropyBonusPGLoss
from rlref.lab import SMALL, VOCAB_SIZE, GRPOConfig, PolicyConfig, TinyCausalLM, grpo_train, make_task
from rlref.lab.batched import grpo_train_seeds
from rlref.losses import ClippedPGLoss, LossInputType, LossType

RTOL, ATOL, PARAM_ATOL = 1e-4, 1e-5, 1e-4
POLICY = PolicyConfig(VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, max_seq_len=24)


def _assert_same_run(h_seq, h_bat, p_seq, p_bat, equal_nan=False):
    ds, db = h_seq.deterministic(), h_bat.deterministic()
    assert len(ds) == len(db)
    assert h_seq.stopped_reason == h_bat.stopped_reason
    for i, (a, b) in enumerate(zip(ds, db, strict=True)):
        assert a.keys() == b.keys(), f"step {i}: keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL, err_msg=f"step {i}, {k}")
    assert set(h_seq.keys()) == set(h_bat.keys())  # timing keys too
    for (name, x), (_, y) in zip(p_seq.named_parameters(), p_bat.named_parameters(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=PARAM_ATOL, equal_nan=equal_nan,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _both_ways(make_policy, task, configs, make_kwargs=None, **batched_kw):
    """Train run ``i`` with ``grpo_train`` and all runs with ``grpo_train_seeds``.

    ``make_kwargs(i)`` builds run ``i``'s keyword arguments (prompt_sampler, callback, ...) afresh for
    each path, so stateful objects are not shared between the two. Returns
    ``(sequential histories, sequential policies, batched histories, batched policies)``.
    """
    n = len(configs)
    make_kwargs = make_kwargs or (lambda i: {})
    seq_p = [make_policy(i) for i in range(n)]
    seq_h = [grpo_train(seq_p[i], task, configs[i], **make_kwargs(i)) for i in range(n)]
    bat_p = [make_policy(i) for i in range(n)]
    per_run = [make_kwargs(i) for i in range(n)]
    kw = {k: [d[k] for d in per_run] for k in per_run[0]}
    bat_h = grpo_train_seeds(bat_p, task, configs, **kw, **batched_kw)
    return seq_h, seq_p, bat_h, bat_p


def _check_all(seq_h, seq_p, bat_h, bat_p, stacked=True):
    for hs, ps, hb, pb in zip(seq_h, seq_p, bat_h, bat_p, strict=True):
        _assert_same_run(hs, hb, ps, pb)
        assert ("stack_size" in hb.meta) == stacked


def test_small_scale_seeds_match_sequential_runs():
    """The notebooks' main use: SMALL scale, default GRPO, different seeds."""
    seeds = [3, 4, 5]
    configs = [SMALL.grpo_config(seed=s, max_num_steps=5) for s in seeds]
    out = _both_ways(lambda i: TinyCausalLM(SMALL.policy, seed=seeds[i]), make_task("greater"), configs)
    _check_all(*out)
    assert out[2][0].meta["stack_size"] == 3


class _EntropyFromLogits:
    """A LOGIT-input loss (maximise the exact entropy of the response positions), to cover that path."""

    loss_type = LossType.TOKEN_LEVEL
    input_type = LossInputType.LOGIT

    def __call__(self, logits, data, global_valid_seqs, global_valid_toks):
        lp = torch.log_softmax(logits[:, :-1], -1)
        ent = -(lp.exp() * lp).sum(-1)
        mask = data["token_mask"][:, 1:] * data["sample_mask"][:, None]
        loss = -(ent * mask).sum() / global_valid_toks
        return loss, {"loss": float(loss.detach()), "entropy_max": float(ent.detach().max())}


def test_per_seed_options_global_batches_and_multi_token_responses():
    """Per-seed loss objects, advantage estimators and optimizer knobs; two optimizer steps per GRPO step
    with micro-batches; responses of several tokens ending with EOS; runs of different lengths."""
    base = GRPOConfig(num_prompts_per_step=8, num_generations_per_prompt=4, max_num_steps=5,
                      train_global_batch_size=16, train_micro_batch_size=8)
    configs = [
        base.replace(seed=0),
        base.replace(seed=1, loss_fn=EntropyBonusPGLoss(0.1), lr=5e-3, lr_warmup_steps=3, weight_decay=0.1),
        base.replace(seed=2, adv_estimator="reinforce_plus_plus", max_grad_norm=None, max_num_steps=3,
                     loss_fn={"reference_policy_kl_penalty": 0.05}),
        base.replace(seed=3, normalize_rewards=False, use_leave_one_out_baseline=False,
                     advantage_clip_low=-1.0, advantage_clip_high=1.0, loss_fn=_EntropyFromLogits()),
        base.replace(seed=4, adv_estimator="gdpo", max_grad_norm=0.01),
    ]
    task = make_task("copy", 2, reward_components=["reward/correct", "reward/partial"], extra_tokens=1)
    _check_all(*_both_ways(lambda i: TinyCausalLM(POLICY, seed=10 + i), task, configs))


def test_callbacks_samplers_and_early_stop():
    """Per-seed curriculum samplers; a callback that reads the policy, one that rescales a weight in place,
    and one that stops its run early; a shared reference model."""
    tasks = [make_task("copy", d) for d in (1, 2)]
    configs = [GRPOConfig(num_prompts_per_step=8, num_generations_per_prompt=4, max_num_steps=5, seed=s)
               for s in range(3)]
    reference = TinyCausalLM(POLICY, seed=99)

    def make_kwargs(i):
        def read(step, metrics, policy):
            metrics["lab/test_weight_sum"] = float(policy.ln_f.weight.sum())

        def rescale(step, metrics, policy):
            with torch.no_grad():
                policy.ln_f.weight.mul_(1.01)

        def stop(step, metrics, policy):
            return step == 2

        return {"prompt_sampler": MixtureSampler(tasks, 8, seed=i), "callback": (read, rescale, stop)[i],
                "reference": reference}

    out = _both_ways(lambda i: TinyCausalLM(POLICY, seed=20 + i), None, configs, make_kwargs)
    _check_all(*out)
    assert [len(h) for h in out[2]] == [5, 5, 3]
    assert out[2][2].stopped_reason == "callback"


class _NaNAt:
    """ClippedPGLoss, except that the loss is NaN at one call (a fault injected into one seed)."""

    loss_type = LossType.TOKEN_LEVEL
    input_type = LossInputType.LOGPROB

    def __init__(self, at):
        self.calls, self.at, self.inner = 0, at, ClippedPGLoss()

    def __call__(self, **kw):
        loss, metrics = self.inner(**kw)
        self.calls += 1
        if self.calls == self.at:
            loss = loss * math.nan
            metrics["loss"] = math.nan
        return loss, metrics


@pytest.mark.parametrize("mode", ["skip", "stop", "step"])
def test_nonfinite_step_in_one_seed(mode):
    """One seed's loss turns NaN at its third step: only that seed skips, stops or steps, as sequentially."""
    task = make_task("greater")
    configs = [GRPOConfig(num_prompts_per_step=8, num_generations_per_prompt=4, max_num_steps=5, seed=s,
                          on_nonfinite=mode, loss_fn=_NaNAt(3) if s == 1 else None) for s in range(3)]
    # loss objects hold a call counter: give each path its own
    make_cfg = [lambda c=c: c.replace(loss_fn=_NaNAt(3)) if isinstance(c.loss_fn, _NaNAt) else c
                for c in configs]
    seq_p = [TinyCausalLM(POLICY, seed=30 + i) for i in range(3)]
    with pytest.warns(RuntimeWarning) if mode == "step" else contextlib.nullcontext():
        seq_h = [grpo_train(p, task, f()) for p, f in zip(seq_p, make_cfg, strict=True)]
    bat_p = [TinyCausalLM(POLICY, seed=30 + i) for i in range(3)]
    with pytest.warns(RuntimeWarning) if mode == "step" else contextlib.nullcontext():
        bat_h = grpo_train_seeds(bat_p, task, [f() for f in make_cfg])
    assert bat_h[1].nonfinite_steps == seq_h[1].nonfinite_steps
    assert seq_h[1].nonfinite_steps == ([2, 3, 4] if mode == "step" else [2])  # "step" makes the weights NaN
    for i in range(3):
        _assert_same_run(seq_h[i], bat_h[i], seq_p[i], bat_p[i], equal_nan=mode == "step")


def test_unsupported_runs_fall_back_to_grpo_train(monkeypatch):
    """generation_dtype and dynamic sampling go through grpo_train: identical histories, no stack."""
    task = make_task("greater")
    configs = [GRPOConfig(num_prompts_per_step=8, num_generations_per_prompt=4, max_num_steps=3, seed=s,
                          generation_dtype=torch.bfloat16 if s == 0 else None, use_dynamic_sampling=s == 1)
               for s in range(2)]
    seq_h, _, bat_h, _ = _both_ways(lambda i: TinyCausalLM(POLICY, seed=i), task, configs)
    for hs, hb in zip(seq_h, bat_h, strict=True):
        assert hs.deterministic() == hb.deterministic()
        assert "stack_size" not in hb.meta
    monkeypatch.setenv("RLREF_BATCHED", "0")
    plain = [GRPOConfig(num_prompts_per_step=8, num_generations_per_prompt=4, max_num_steps=2, seed=s)
             for s in range(2)]
    seq_h, _, bat_h, _ = _both_ways(lambda i: TinyCausalLM(POLICY, seed=i), task, plain)
    assert [h.deterministic() for h in seq_h] == [h.deterministic() for h in bat_h]
    assert all("stack_size" not in h.meta for h in bat_h)


def test_bad_arguments_are_named():
    task = make_task("greater")
    p = [TinyCausalLM(POLICY, seed=i) for i in range(2)]
    cfg = [GRPOConfig(max_num_steps=1, seed=i) for i in range(2)]
    with pytest.raises(ValueError, match="configs has 1 entries"):
        grpo_train_seeds(p, task, cfg[:1])
    with pytest.raises(ValueError, match="distinct"):
        grpo_train_seeds([p[0], p[0]], task, cfg)
    with pytest.raises(ValueError, match="callback has 3 entries"):
        grpo_train_seeds(p, task, cfg, callback=[None] * 3)
    with pytest.raises(TypeError, match="configs must be a list"):
        grpo_train_seeds(p, task, cfg[0])
    with pytest.raises(ValueError, match="max_stack"):
        grpo_train_seeds(p, task, cfg, max_stack=0)
