"""Tests for rlref.bench: timers, summaries, FLOPs formulas, the peak table and number formats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from rlref import bench
from rlref.lab.policy import PolicyConfig, TinyCausalLM

# ------------------------------------------------------------------ timing


def test_time_wall_runs_warmup_plus_repeats_times_number_calls():
    calls = []
    out = bench.time_wall(lambda: calls.append(1), repeats=4, warmup=2, number=3)
    assert len(out) == 4
    assert len(calls) == 2 + 4 * 3
    assert all(t >= 0 for t in out)


def test_time_wall_measures_a_known_sleep():
    import time

    out = bench.time_wall(lambda: time.sleep(0.01), repeats=3, warmup=0)
    assert all(0.009 <= t < 0.5 for t in out)


def test_interleave_rotates_the_starting_candidate_each_round():
    order = []
    fns = {name: (lambda n=name: order.append(n)) for name in "abc"}
    out = bench.interleave(fns, rounds=3, warmup=0)
    assert order == list("abc" "bca" "cab")
    assert {k: len(v) for k, v in out.items()} == {"a": 3, "b": 3, "c": 3}


def test_interleave_runs_warmup_for_every_candidate_before_timing():
    order = []
    fns = {name: (lambda n=name: order.append(n)) for name in "ab"}
    bench.interleave(fns, rounds=1, warmup=2)
    assert order == list("aa" "bb" "ab")


class _FakeEvent:
    """Stands in for torch.cuda.Event: record() reads a fake clock, elapsed_time() returns ms."""

    clock = [0.0]

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = self.clock[0]

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def test_time_cuda_events_converts_ms_to_seconds_per_call_and_syncs_once(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    _FakeEvent.clock[0] = 0.0

    def step():  # every call advances the fake GPU clock by 2 ms
        _FakeEvent.clock[0] += 0.002

    out = bench.time_cuda_events(step, repeats=3, warmup=1, number=4)
    assert out == pytest.approx([0.002] * 3)
    assert len(syncs) == 2  # after warm-up and once at the end, not between repeats


def test_time_cuda_events_without_cuda_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        bench.time_cuda_events(lambda: None)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"), ({"number": 0}, "number"),
     ({"repeats": 1.5}, "repeats")],
)
def test_time_wall_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench.time_wall(lambda: None, **kwargs)


def test_time_wall_rejects_a_non_callable():
    with pytest.raises(TypeError, match="callable"):
        bench.time_wall(3)


def test_interleave_rejects_empty_and_non_callables():
    with pytest.raises(ValueError, match="non-empty"):
        bench.interleave({})
    with pytest.raises(TypeError, match="fns\\['x'\\]"):
        bench.interleave({"x": 1})


# ------------------------------------------------------------------ summaries


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=10.0), min_size=1, max_size=40))
def test_summary_quartiles_equal_numpy_percentiles_and_are_ordered(xs):
    s = bench.summarize(xs)
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    assert s.median == pytest.approx(med) and s.q1 == pytest.approx(q1) and s.q3 == pytest.approx(q3)
    assert s.min <= s.q1 <= s.median <= s.q3 <= s.max
    assert s.iqr == pytest.approx(q3 - q1)
    assert s.n == len(xs)


def test_summary_of_a_hand_checked_sample():
    s = bench.summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.median, s.q1, s.q3, s.iqr) == (3.0, 2.0, 4.0, 2.0)
    assert s.rel_iqr == pytest.approx(2 / 3)
    assert s.fmt(scale=1.0, unit="s") == "3 s [IQR 2-4] (n=5)"


def test_summarize_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="at least one"):
        bench.summarize([])
    with pytest.raises(ValueError, match="finite"):
        bench.summarize([1.0, math.nan])


def test_paired_ratios_divide_round_by_round():
    assert bench.paired_ratios([2.0, 3.0], [1.0, 6.0]) == [2.0, 0.5]
    with pytest.raises(ValueError, match="equal length"):
        bench.paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        bench.paired_ratios([0.0], [1.0])


# ------------------------------------------------------------------ FLOPs and utilisation


def nemo_llama_formula(gbs, s, L, h, f, V, query_groups, heads):
    """NeMo RL's Llama model-FLOPs formula (forward + backward), written out from its source."""
    return gbs * s * L * h * h * (12 + 12 * query_groups / heads + 18 * f / h + 6 * s / h + 6 * V / (L * h))


@pytest.mark.parametrize(
    "L, h, f, V, s, kv, heads",
    [(32, 4096, 14336, 128256, 4096, 8, 32), (16, 2048, 8192, 128256, 2048, 8, 32),
     (2, 64, 256, 100, 32, 4, 4)],
)
def test_gated_causal_formula_equals_nemo_rl_llama_formula(L, h, f, V, s, kv, heads):
    ours = bench.transformer_train_flops(3 * s, n_layers=L, d_model=h, d_ff=f, vocab_size=V, seq_len=s,
                                         kv_ratio=kv / heads, gated_mlp=True, causal=True)
    assert ours == pytest.approx(nemo_llama_formula(3, s, L, h, f, V, kv, heads), rel=1e-12)


def test_lab_model_flops_match_torch_flop_counter_forward_and_training():
    cfg = PolicyConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
    model = TinyCausalLM(cfg, seed=0)
    B, S = 3, 16
    ids = torch.randint(0, 40, (B, S), generator=torch.Generator().manual_seed(0))
    # The lab model: GELU (non-gated) MLP, full S x S attention scores, tied output projection.
    shape = dict(n_layers=2, d_model=32, d_ff=128, vocab_size=40, seq_len=S, gated_mlp=False, causal=False)
    with FlopCounterMode(display=False) as fc:
        model(ids)
    assert fc.get_total_flops() == bench.transformer_flops_per_token(**shape) * B * S
    with FlopCounterMode(display=False) as fc:
        model(ids).logsumexp(-1).sum().backward()
    assert fc.get_total_flops() == bench.transformer_train_flops(B * S, **shape)


def test_six_n_rule_is_the_formula_without_attention_for_a_wide_model():
    # 6 * (matmul parameters) per token; the attention term is 6 s h L / (that) of it.
    L, h, f, V, s = 4, 1024, 4096, 32000, 128
    n_matmul = L * (4 * h * h + 2 * h * f) + h * V
    exact = bench.transformer_train_flops(1, n_layers=L, d_model=h, d_ff=f, vocab_size=V, seq_len=s,
                                          gated_mlp=False, causal=True)
    assert exact == pytest.approx(6 * n_matmul + 6 * L * s * h)


def test_matmul_flops_and_validation():
    assert bench.matmul_flops(2, 3, 4) == 48
    with pytest.raises(ValueError, match="k"):
        bench.matmul_flops(2, 3, 0)


def test_peak_table_matches_nemo_rl_values_and_prefix_lookup():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.5
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", torch.float32) == 67.0
    assert bench.peak_tflops("NVIDIA H200") == 989.5
    # review G5: the NVL board has a lower dense peak, not the SXM part's (1,671 sparse / 2)
    assert bench.peak_tflops("NVIDIA H200 NVL") == 835.5
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3 (MIG 1g.10gb)") == 989.5  # suffix: prefix match
    assert bench.peak_tflops("NVIDIA GB200") == 2450.0
    with pytest.raises(ValueError, match="no peak TFLOP/s"):
        bench.peak_tflops("NVIDIA GeForce RTX 4090")
    with pytest.raises(TypeError):
        bench.peak_tflops(None)


def test_mfu_and_tokens_per_sec_hand_checked():
    # 989.5e12 FLOPs in 2 s on one H100 is 50 %; on 2 GPUs 25 %.
    assert bench.mfu(989.5e12, 2.0, 989.5) == pytest.approx(0.5)
    assert bench.mfu(989.5e12, 2.0, 989.5, num_gpus=2) == pytest.approx(0.25)
    assert bench.tokens_per_sec(1000, 4.0) == 250.0
    assert bench.tokens_per_sec(1000, 4.0, num_gpus=2) == 125.0
    with pytest.raises(ValueError, match="seconds"):
        bench.mfu(1.0, 0.0, 989.5)
    with pytest.raises(ValueError, match="peak"):
        bench.mfu(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="seconds"):
        bench.tokens_per_sec(1, -1.0)


def test_transformer_flops_validation():
    with pytest.raises(ValueError, match="kv_ratio"):
        bench.transformer_flops_per_token(1, 8, 8, 8, 8, kv_ratio=0)
    with pytest.raises(ValueError, match="d_model"):
        bench.transformer_flops_per_token(1, 0, 8, 8, 8)


# ------------------------------------------------------------------ number formats


def test_float_format_table_values():
    rows = {r["dtype"]: r for r in bench.float_format_table(
        [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])}
    assert [(r["exponent_bits"], r["mantissa_bits"]) for r in rows.values()] == [
        (8, 23), (8, 7), (5, 10), (4, 3), (5, 2)]
    assert rows["bfloat16"]["eps"] == 2.0 ** -7
    assert rows["bfloat16"]["decimal_digits"] == pytest.approx(8 * math.log10(2))  # 7 stored + hidden bit
    assert rows["float16"]["max"] == 65504.0
    assert rows["float8_e4m3fn"]["max"] == 448.0
    assert rows["float8_e5m2"]["max"] == 57344.0
    assert rows["float16"]["smallest_subnormal"] == 2.0 ** -24


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_smallest_subnormal_is_representable_and_half_of_it_rounds_to_zero(dtype):
    tiny = bench.smallest_subnormal(dtype)
    assert torch.tensor(tiny, dtype=torch.float64).to(dtype).item() == tiny
    assert torch.tensor(tiny * 0.49, dtype=torch.float64).to(dtype).item() == 0.0


def test_format_table_rejects_integer_dtypes():
    with pytest.raises(TypeError, match="floating"):
        bench.float_format_table([torch.int32])


def test_logprobs_in_precision_fp32_is_close_and_bf16_error_is_bounded():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, 1000, (64,), generator=g)
    exact = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    fp32 = bench.logprobs_in_precision(logits, tokens, torch.float32, torch.float32)
    assert (fp32 - exact).abs().max() < 1e-5
    bf16 = bench.logprobs_in_precision(logits, tokens, torch.bfloat16, torch.bfloat16)
    err = (bf16 - exact).abs()
    # logits rounded to 2^-8 relative (|logit| <= ~15) plus an output rounding of 2^-8 |lp|.
    assert err.max() < 2 ** -8 * (logits.abs().max() + exact.abs().max()) * 2
    assert err.max() > 1e-3  # bf16 really is coarser than fp32


def test_logprobs_in_precision_validation():
    with pytest.raises(ValueError, match="logits"):
        bench.logprobs_in_precision(torch.zeros(3), torch.zeros(3, dtype=torch.int64), torch.float32,
                                    torch.float32)
    with pytest.raises(ValueError, match="tokens"):
        bench.logprobs_in_precision(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int32), torch.float32,
                                    torch.float32)
    with pytest.raises(ValueError, match="lie in"):
        bench.logprobs_in_precision(torch.zeros(1, 4), torch.tensor([4]), torch.float32, torch.float32)
    with pytest.raises(TypeError, match="floating"):
        bench.logprobs_in_precision(torch.zeros(1, 4), torch.tensor([0]), torch.int8, torch.float32)


def test_clip_fraction_counts_both_sides_and_respects_the_mask():
    r = torch.tensor([0.7, 0.85, 1.0, 1.25, 1.3])
    assert bench.clip_fraction(r) == pytest.approx(3 / 5)  # 0.7 < 0.8; 1.25 and 1.3 > 1.2
    assert bench.clip_fraction(r, ratio_clip_max=0.28) == pytest.approx(2 / 5)  # clip-higher keeps 1.25
    assert bench.clip_fraction(r, ratio_clip_min=0.35, ratio_clip_max=0.28) == pytest.approx(1 / 5)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    assert bench.clip_fraction(r, mask) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no tokens"):
        bench.clip_fraction(r, torch.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        bench.clip_fraction(r, torch.ones(4))


def test_policy_gradient_logit_grad_equals_autograd():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (5,), generator=g)
    A = torch.randn(5, generator=g, dtype=torch.float64)
    loss = -(A * torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)).sum() / 1000.0
    loss.backward()
    assert torch.allclose(bench.policy_gradient_logit_grad(z.detach(), y, A, 1000.0), z.grad, atol=1e-15)
    # Each row sums to zero: the gradient only moves probability between tokens.
    assert torch.allclose(z.grad.sum(-1), torch.zeros(5, dtype=torch.float64), atol=1e-15)


def test_policy_gradient_logit_grad_validation():
    z, y, A = torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), torch.ones(2)
    with pytest.raises(ValueError, match="global_valid_toks"):
        bench.policy_gradient_logit_grad(z, y, A, 0)
    with pytest.raises(ValueError, match="advantages"):
        bench.policy_gradient_logit_grad(z, y, torch.ones(3), 1.0)


def test_nvml_details_degrade_without_nvml(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert bench._nvml_details(0) == "NVML not available"


def test_nvml_details_report_every_field(monkeypatch):
    import sys
    import types

    class Err(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=Err, NVML_CLOCK_SM=1, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: "h", nvmlSystemGetDriverVersion=lambda: b"570.1",
        nvmlDeviceGetClockInfo=lambda h, c: 1755, nvmlDeviceGetMaxClockInfo=lambda h, c: 1980,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700000, nvmlDeviceGetMigMode=lambda h: (0, 0),
        nvmlDeviceGetEccMode=lambda h: (_ for _ in ()).throw(Err()), nvmlDeviceGetCount=lambda: 8)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    line = bench._nvml_details(0)
    assert line == ("driver 570.1, SM 1755/1980 MHz, power cap 700 W, MIG off, ECC n/a, "
                    "8 GPU(s) visible to NVML")
    fake.nvmlInit = lambda: (_ for _ in ()).throw(RuntimeError("no driver"))
    assert bench._nvml_details(0) == "NVML query failed (RuntimeError)"
