"""Tests for rlref.perf_models: roofline, scaling, alpha-beta, refit, FLOPs formulas, efficiency, syncs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode

from rlref import perf_models as P
from rlref.distributed import wire_bytes


def test_roofline_basics():
    h100 = P.GPU_SPECS["H100 SXM"]
    ridge = P.ridge_point(h100.bf16_flops, h100.hbm_bytes_per_s)
    assert ridge == pytest.approx(989.5 / 3.35, rel=1e-12)
    half = P.attainable_flops(ridge / 2, h100.bf16_flops, h100.hbm_bytes_per_s)
    assert half == pytest.approx(h100.bf16_flops / 2)
    assert P.attainable_flops(10 * ridge, h100.bf16_flops, h100.hbm_bytes_per_s) == h100.bf16_flops
    # square bf16 matmul: 2n^3 / (2 * 3n^2) = n/3
    assert P.matmul_intensity(3000, 3000, 3000) == pytest.approx(1000.0)
    # decode: m rows against a k x n weight, m << k, n: intensity ~ m FLOP/byte in bf16
    assert P.matmul_intensity(4, 8192, 8192) == pytest.approx(4, rel=1e-3)
    assert P.arithmetic_intensity(10.0, 4.0) == 2.5
    with pytest.raises(ValueError, match="nbytes"):
        P.arithmetic_intensity(1.0, 0)
    with pytest.raises(ValueError, match="m must"):
        P.matmul_intensity(0, 1, 1)


def test_h200_nvl_dense_peak_is_half_its_sparse_figure():
    assert P.GPU_SPECS["H200 NVL"].bf16_flops == pytest.approx(1671e12 / 2)
    assert P.GPU_SPECS["H200 SXM"].hbm_bytes_per_s > P.GPU_SPECS["H100 SXM"].hbm_bytes_per_s


def test_decode_bound():
    # weights only: B / W steps per second, batch tokens per step
    assert P.decode_tokens_per_sec_bound(1e9, 0.0, 1, 1e12) == pytest.approx(1000.0)
    assert P.decode_tokens_per_sec_bound(1e9, 0.0, 8, 1e12) == pytest.approx(8000.0)
    # KV dominates for large batches: tends to B / KV
    assert P.decode_tokens_per_sec_bound(1e9, 1e6, 10**6, 1e12) == pytest.approx(1e12 / 1e6, rel=2e-3)
    with pytest.raises(ValueError, match="batch"):
        P.decode_tokens_per_sec_bound(1e9, 0.0, 0, 1e12)


def test_scaling_efficiency_and_karp_flatt():
    assert P.strong_scaling_efficiency(128, 58.9, 256, 37.4) == pytest.approx(37.4 / 58.9)
    with pytest.raises(ValueError, match="n2 must exceed"):
        P.strong_scaling_efficiency(256, 1.0, 128, 1.0)
    # Amdahl with serial fraction f: S = 1 / (f + (1 - f)/r); Karp-Flatt recovers f
    f, r = 0.3, 4.0
    s = 1 / (f + (1 - f) / r)
    assert P.karp_flatt(s, r) == pytest.approx(f)
    assert P.karp_flatt(r, r) == pytest.approx(0.0, abs=1e-12)  # perfect scaling: no serial part
    for (_, _), rows in P.NEMO_RL_SCALING.items():
        assert rows[0][0] < rows[1][0]


def test_alpha_beta_fit_recovers_parameters():
    alpha, beta, p = 20e-6, 3e9, 2
    sizes = [2**k for k in range(10, 26, 2)]
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        times = [P.collective_time(op, n, p, alpha, beta) for n in sizes]
        a, b = P.fit_alpha_beta(op, sizes, times, p)
        assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6)
    assert P.collective_steps("all_reduce", 8) == 14 and P.collective_steps("all_gather", 8) == 7
    with pytest.raises(ValueError, match="collective"):
        P.collective_steps("broadcast", 2)
    with pytest.raises(ValueError, match="equal length"):
        P.fit_alpha_beta("all_reduce", [1.0], [1.0], 2)


def test_dp_step_comm_bytes_microbatches_and_defer():
    n, p, M = 1.5e9, 8, 128  # grpo_math_1B: 512 / 4 micro-batches
    ddp = P.dp_step_comm_bytes("ddp", n, p, M, grad_bytes=4)
    assert ddp["all_reduce"] == pytest.approx(wire_bytes("all_reduce", 4 * n, p))
    fsdp = P.dp_step_comm_bytes("fsdp2", n, p, M)
    assert fsdp["all_gather"] == pytest.approx(2 * M * wire_bytes("all_gather", 2 * n, p))
    assert fsdp["reduce_scatter"] == pytest.approx(wire_bytes("reduce_scatter", 4 * n, p))
    eager = P.dp_step_comm_bytes("fsdp2", n, p, M, defer_grad_sync=False)
    assert eager["reduce_scatter"] == pytest.approx(M * fsdp["reduce_scatter"])
    # M = 1, bf16 gathers, fp32 reduce: equal to an fp32 DDP all-reduce (the page's identity)
    one = P.dp_step_comm_bytes("fsdp2", n, p, 1)
    assert sum(one.values()) == pytest.approx(ddp["all_reduce"])
    with pytest.raises(ValueError, match="strategy"):
        P.dp_step_comm_bytes("zero3", n, p, M)
    assert P.exposed_comm_time(3.0, 1.0) == 2.0 and P.exposed_comm_time(1.0, 3.0) == 0.0


def test_fit_line_and_refit():
    a, b, r2 = P.fit_line([1, 2, 3, 4], [3, 5, 7, 9])
    assert (a, b, r2) == pytest.approx((1.0, 2.0, 1.0))
    assert P.refit_seconds(3e9, 1.5e9, 0.5) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="distinct"):
        P.fit_line([1, 1], [2, 3])


def test_hfu_over_mfu_matches_flop_counter_with_checkpointing():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    x = torch.randn(16, 32, requires_grad=True)

    def flops(ckpt, early_stop=True):
        with FlopCounterMode(display=False) as c, set_checkpoint_early_stop(early_stop):
            y = checkpoint(lin, x, use_reentrant=False) if ckpt else lin(x)
            y.sum().backward()
        return c.get_total_flops()

    # weight and input gradients are both counted, so backward = 2 x forward exactly here
    assert flops(True, early_stop=False) / flops(False) == pytest.approx(P.hfu_over_mfu(1.0))
    # early stop (torch's default) skips the last matmul, whose output backward does not need
    assert flops(True) / flops(False) == pytest.approx(P.hfu_over_mfu(0.5))
    assert P.hfu_over_mfu(0.0) == 1.0
    with pytest.raises(ValueError, match="recompute"):
        P.hfu_over_mfu(2.0)


def test_real_vs_padded_flops():
    real, padded = P.real_vs_padded_flops([10, 20, 30], lambda s: 2.0 * s)
    assert (real, padded) == (120.0, 180.0)
    with pytest.raises(ValueError, match="empty"):
        P.real_vs_padded_flops([], lambda s: s)


def test_model_configs_match_published_parameter_counts():
    # model cards: Qwen2.5-1.5B 1.54B; Llama-3.1-8B 8.03B; Qwen3-30B-A3B 30.5B total, 3.3B active
    cfg = P.MODEL_CONFIGS
    assert cfg["Qwen2.5-1.5B"].params() == pytest.approx(1.54e9, rel=0.01)
    assert cfg["Llama-3.1-8B"].params() == pytest.approx(8.03e9, rel=0.01)
    assert cfg["Qwen3-30B-A3B"].params() == pytest.approx(30.5e9, rel=0.01)
    assert cfg["Qwen3-30B-A3B"].params(active=True) == pytest.approx(3.3e9, rel=0.03)
    assert cfg["Llama-3.1-8B"].kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2


def test_nemo_rl_formulas():
    q = P.MODEL_CONFIGS["Qwen2.5-1.5B"]
    # review I3: Qwen2's formula counts Q, K, V as 3 h^2: 10.05 vs 9.39 GFLOP/token at s = 512
    assert P.nemo_rl_flops_per_token(q, 512) == pytest.approx(10.054e9, rel=1e-3)
    assert P.exact_matmul_flops_per_token(q, 512) == pytest.approx(9.394e9, rel=1e-3)
    # the llama formula with GQA is exact for the same shape (NeMo RL's Llama formula, literal form)
    as_llama = dataclasses.replace(q, family="llama")
    assert P.nemo_rl_flops_per_token(as_llama, 512) == pytest.approx(P.exact_matmul_flops_per_token(q, 512))
    # with n_kv = n_q, qwen2's formula is exact as well
    mha = dataclasses.replace(q, kv_heads=q.heads)
    assert P.nemo_rl_flops_per_token(mha, 512) == pytest.approx(P.exact_matmul_flops_per_token(mha, 512))
    # qwen3 on the MoE config: intermediate_size = top_k * moe_intermediate_size, so exact
    m = P.MODEL_CONFIGS["Qwen3-30B-A3B"]
    assert m.dense_ffn == m.top_k * m.ffn
    assert P.nemo_rl_flops_per_token(m, 4096) == pytest.approx(P.exact_matmul_flops_per_token(m, 4096))
    # full square = causal half + 6 L s n_q d
    extra = P.exact_matmul_flops_per_token(q, 512, causal_half=False) - P.exact_matmul_flops_per_token(q, 512)
    assert extra == pytest.approx(6 * q.layers * 512 * q.heads * q.head_dim)
    with pytest.raises(ValueError, match="family"):
        P.nemo_rl_flops_per_token(dataclasses.replace(q, family="gpt"), 512)


def test_efficiency_summary_follows_nemo_rl():
    out = P.efficiency_summary({"idle/buffer_starvation": 20.0, "idle/refit_bubble": 5.0,
                                "idle/buffer_full_backoff": 50.0}, 100.0)
    assert out["efficiency/efficiency_pct"] == pytest.approx(75.0)
    assert out["efficiency/thread_seconds_total_s"] == 50.0  # not part of the percentage
    assert out["efficiency/idle/refit_bubble_pct"] == pytest.approx(5.0)
    capped = P.efficiency_summary({"idle/validation": 500.0}, 100.0)
    assert capped["efficiency/efficiency_pct"] == 0.0
    with pytest.raises(ValueError, match="unknown"):
        P.efficiency_summary({"idle/nap": 1.0}, 10.0)


def test_host_sync_counter_counts_and_restores():
    x = torch.arange(4.0)
    orig = torch.Tensor.item
    with P.HostSyncCounter() as c:
        x.sum().item()
        int(x.max())
        float(x.min())
        bool(x[0] > 1)
        x.tolist()
        y = x * 2  # no host copy
    assert c.count == 5 and c.by_kind["item"] == 1
    assert torch.Tensor.item is orig
    assert math.isfinite(float(y.sum()))
