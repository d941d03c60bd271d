"""Tests for rlref.dynamics: clip fraction metric, consumed samples and the timing breakdown."""

import numpy as np
import pytest
import torch

from rlref.bench import clip_fraction
from rlref.dynamics import ClipFractionLoss, consumed, timing_breakdown
from rlref.lab import VOCAB_SIZE, GRPOConfig, History, PolicyConfig, TinyCausalLM, grpo_train, make_task
from rlref.losses import ClippedPGLoss


def _batch(B=4, S=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tm = torch.zeros(B, S)
    tm[:, 2:] = 1.0
    tm[0, -1] = 0.0
    data = {
        "token_mask": tm, "sample_mask": torch.tensor([1.0, 1.0, 0.0, 1.0]),
        "advantages": torch.randn(B, S, generator=g),
        "prev_logprobs": -torch.rand(B, S, generator=g) * 2,
        "generation_logprobs": -torch.rand(B, S, generator=g) * 2,
        "reference_policy_logprobs": -torch.rand(B, S, generator=g) * 2,
    }
    curr = data["prev_logprobs"][:, 1:] + 0.4 * torch.randn(B, S - 1, generator=g)
    return curr, data


def _call(loss_fn, curr, data, rows=slice(None)):
    mask = data["token_mask"][:, 1:] * data["sample_mask"][:, None]
    sub = {k: v[rows] for k, v in data.items()}
    return loss_fn(next_token_logprobs=curr[rows], data=sub, global_valid_seqs=data["sample_mask"].sum(),
                   global_valid_toks=mask.sum())


def test_clip_fraction_matches_bench_and_loss_unchanged():
    curr, data = _batch()
    inner = ClippedPGLoss(ratio_clip_min=0.2, ratio_clip_max=0.28)
    wrapped = ClipFractionLoss(inner)
    loss, m = _call(wrapped, curr, data)
    ref_loss, ref_m = _call(inner, curr, data)
    assert torch.equal(loss, ref_loss)
    assert {k: v for k, v in m.items() if k != "lab/clip_fraction"} == ref_m
    ratio = torch.exp(curr - data["prev_logprobs"][:, 1:])
    mask = data["token_mask"][:, 1:] * data["sample_mask"][:, None]
    expected = clip_fraction(ratio, mask, 0.2, 0.28)
    assert 0 < expected < 1
    assert m["lab/clip_fraction"] == pytest.approx(expected, abs=1e-12)


def test_clip_fraction_micro_batches_add_up():
    curr, data = _batch(seed=3)
    wrapped = ClipFractionLoss(ClippedPGLoss())
    full = _call(wrapped, curr, data)[1]["lab/clip_fraction"]
    parts = sum(_call(wrapped, curr, data, slice(i, i + 1))[1]["lab/clip_fraction"] for i in range(4))
    assert parts == pytest.approx(full, abs=1e-12)


def test_clip_fraction_zero_on_policy():
    curr, data = _batch()
    on_policy = data["prev_logprobs"][:, 1:].clone()
    assert _call(ClipFractionLoss(ClippedPGLoss()), on_policy, data)[1]["lab/clip_fraction"] == 0.0


def test_clip_fraction_loss_bad_inner():
    with pytest.raises(TypeError, match="ratio_clip"):
        ClipFractionLoss(object())


def test_clip_fraction_in_lab_run():
    P = PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    h = grpo_train(TinyCausalLM(P, seed=0), make_task("last"),
                   GRPOConfig(num_prompts_per_step=4, num_generations_per_prompt=4, max_num_steps=3,
                              train_global_batch_size=8, lr=1e-2, loss_fn=ClipFractionLoss(ClippedPGLoss())))
    cf = h.series("lab/clip_fraction")
    assert np.all((cf >= 0) & (cf <= 1))


def test_consumed():
    h = History([{"train/global_valid_seqs": 32.0}, {"train/global_valid_seqs": 32.0},
                 {"train/global_valid_seqs": 16.0}])
    np.testing.assert_array_equal(consumed(h), [32, 64, 80])
    np.testing.assert_array_equal(consumed([1, 2, 3]), [1, 3, 6])
    with pytest.raises(ValueError, match="non-negative"):
        consumed([1, -2])


def test_timing_breakdown_sums_to_total():
    steps = [{"timing/train/generation": 1.0 + i, "timing/train/policy_training": 0.5,
              "timing/train/total_step_time": 2.0 + i} for i in range(4)]
    out = timing_breakdown([History(steps)], ["generation", "policy_training"], skip_first=1)
    assert out["generation"] == pytest.approx(3.0)
    assert out["policy_training"] == pytest.approx(0.5)
    assert out["other"] == pytest.approx(0.5)
    assert out["total"] == pytest.approx(out["generation"] + out["policy_training"] + out["other"])
    with pytest.raises(ValueError, match="skip"):
        timing_breakdown([History(steps[:1])], ["generation"], skip_first=1)
    with pytest.raises(ValueError, match="History"):
        timing_breakdown([], ["generation"])
