"""Analytic performance models for the benchmarking and distributed-training pages.

Roofline (Williams, Waterman, Patterson 2009)
    :func:`arithmetic_intensity`, :func:`matmul_intensity`, :func:`attainable_flops`,
    :func:`ridge_point`, :func:`decode_tokens_per_sec_bound` and :data:`GPU_SPECS` (vendor datasheet
    peaks: dense bf16 = half the with-sparsity figure).
Scaling
    :func:`strong_scaling_efficiency`, :func:`karp_flatt` (serial fraction) and
    :data:`NEMO_RL_SCALING` (NeMo RL's published GRPO throughputs).
Collectives (Hockney's alpha-beta model, Thakur et al. 2005)
    :func:`collective_steps`, :func:`collective_time`, :func:`fit_alpha_beta`,
    :func:`dp_step_comm_bytes` (DDP / FSDP2 bytes per optimizer step with micro-batches) and
    :func:`exposed_comm_time` (what overlap cannot hide).
Refit, FLOPs and launch overhead
    :func:`fit_line`, :func:`refit_seconds`, :func:`real_vs_padded_flops`, :func:`hfu_over_mfu`.
Model-specific FLOPs
    :class:`DecoderConfig` (+ :data:`MODEL_CONFIGS`), :func:`nemo_rl_flops_per_token` (the three
    formulas of NeMo RL's FLOPs tracker) and :func:`exact_matmul_flops_per_token`.
Async efficiency and host syncs
    :func:`efficiency_summary` (NeMo RL's ``efficiency/*`` metrics) and :class:`HostSyncCounter`.

Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rlref.distributed import wire_bytes

__all__ = [
    "GPU_SPECS",
    "MODEL_CONFIGS",
    "NEMO_RL_SCALING",
    "DecoderConfig",
    "GpuSpec",
    "HostSyncCounter",
    "arithmetic_intensity",
    "attainable_flops",
    "collective_steps",
    "collective_time",
    "decode_tokens_per_sec_bound",
    "dp_step_comm_bytes",
    "efficiency_summary",
    "exact_matmul_flops_per_token",
    "exposed_comm_time",
    "fit_alpha_beta",
    "fit_line",
    "hfu_over_mfu",
    "karp_flatt",
    "matmul_intensity",
    "nemo_rl_flops_per_token",
    "real_vs_padded_flops",
    "refit_seconds",
    "ridge_point",
    "strong_scaling_efficiency",
]


def _pos(name: str, v, allow_zero: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, "
                         f"got {v!r}")
    return float(v)


def _int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


# --------------------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet peaks of one GPU: dense bf16 FLOP/s, HBM bytes/s, NVLink bytes/s per direction."""

    bf16_flops: float
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float
    source: str


# NVIDIA datasheets (nvidia.com/en-us/data-center/h100/ and /h200/): BF16 Tensor Core 1,979 TFLOPS
# (SXM) and 1,671 TFLOPS (H200 NVL) "with sparsity", halved for dense; HBM 3.35 TB/s (H100 SXM) and
# 4.8 TB/s (H200 SXM and NVL); NVLink 900 GB/s total = 450 GB/s per direction.
GPU_SPECS: dict[str, GpuSpec] = {
    "H100 SXM": GpuSpec(989.5e12, 3.35e12, 450e9, "NVIDIA H100 datasheet (SXM5)"),
    "H200 SXM": GpuSpec(989.5e12, 4.8e12, 450e9, "NVIDIA H200 datasheet (SXM)"),
    "H200 NVL": GpuSpec(835.5e12, 4.8e12, 450e9, "NVIDIA H200 datasheet (NVL, 1,671 TFLOPS sparse)"),
}


def arithmetic_intensity(flops: float, nbytes: float) -> float:
    """``I = flops / bytes`` moved to and from memory (FLOP/byte), the roofline's x-axis."""
    return _pos("flops", flops, allow_zero=True) / _pos("nbytes", nbytes)


def matmul_intensity(m: int, n: int, k: int, bytes_per_element: int = 2) -> float:
    """Intensity of ``[m, k] @ [k, n]`` reading both inputs and writing the output once:
    ``2 m n k / (b (m k + k n + m n))``. Decode (``m`` = batch, small) gives about ``m`` FLOP/byte in bf16."""
    for name, v in (("m", m), ("n", n), ("k", k), ("bytes_per_element", bytes_per_element)):
        _int(name, v)
    return 2 * m * n * k / (bytes_per_element * (m * k + k * n + m * n))


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """Roofline: ``min(P, I * B)`` FLOP/s for intensity ``I``, compute peak ``P``, memory bandwidth ``B``."""
    roof = _pos("intensity", intensity, True) * _pos("bandwidth", bandwidth)
    return min(_pos("peak_flops", peak_flops), roof)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """``P / B``: the intensity above which a kernel can be compute-bound (FLOP/byte)."""
    return _pos("peak_flops", peak_flops) / _pos("bandwidth", bandwidth)


def decode_tokens_per_sec_bound(weight_bytes: float, kv_bytes_per_seq: float, batch: int,
                                bandwidth: float) -> float:
    """Upper bound on decode tokens/s: each step reads the weights once and every sequence's KV cache,
    and emits ``batch`` tokens: ``batch * B / (W + batch * KV)``."""
    _int("batch", batch)
    w = _pos("weight_bytes", weight_bytes)
    kv = _pos("kv_bytes_per_seq", kv_bytes_per_seq, allow_zero=True)
    return batch * _pos("bandwidth", bandwidth) / (w + batch * kv)


# --------------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------------

# NeMo RL v0.6 GRPO, Megatron Core, fixed global batch 512 (docs/about/performance-summary.md at
# 7ea279abf): (system, model) -> ((GPUs, tokens/s/GPU, step seconds, source line), ...).
NEMO_RL_SCALING: dict[tuple[str, str], tuple[tuple[int, float, float, int], ...]] = {
    ("DGX-H100", "DeepSeek V3"): ((256, 12.1, 134.0, 56), (512, 7.24, 111.0, 57)),
    ("DGX-H100", "Qwen3-235B"): ((128, 58.9, 395.0, 59), (256, 37.4, 312.0, 60)),
    ("GB200-NVL72", "DeepSeek V3"): ((128, 30.2, 108.0, 85), (256, 16.4, 98.7, 86)),
    ("GB200-NVL72", "Qwen3-235B"): ((64, 163.0, 286.0, 88), (128, 67.4, 345.0, 89)),
}


def strong_scaling_efficiency(n1: int, per_gpu_1: float, n2: int, per_gpu_2: float) -> float:
    """Fixed total work: ``E = (T2 * n2) / (T1 * n1) / (n2 / n1) = T2 / T1`` for per-GPU throughput ``T``
    (equivalently speedup over the GPU ratio). 1 is perfect; below 1 the extra GPUs are partly idle."""
    _int("n1", n1)
    _int("n2", n2)
    if n2 <= n1:
        raise ValueError(f"n2 must exceed n1, got n1={n1}, n2={n2}")
    return _pos("per_gpu_2", per_gpu_2) / _pos("per_gpu_1", per_gpu_1)


def karp_flatt(speedup: float, gpu_ratio: float) -> float:
    """Experimentally determined serial fraction ``e = (1/S - 1/r) / (1 - 1/r)`` (Karp, Flatt 1990) for a
    speedup ``S`` measured when the GPU count grows by ``r``; Amdahl's law with ``f = e`` reproduces ``S``."""
    s, r = _pos("speedup", speedup), _pos("gpu_ratio", gpu_ratio)
    if r <= 1:
        raise ValueError(f"gpu_ratio must be > 1, got {gpu_ratio!r}")
    return (1 / s - 1 / r) / (1 - 1 / r)


# --------------------------------------------------------------------------------------------------
# Collectives: alpha-beta
# --------------------------------------------------------------------------------------------------


def collective_steps(collective: str, world_size: int) -> int:
    """Latency terms of a ring: ``2 (p - 1)`` for all-reduce, ``p - 1`` for all-gather and reduce-scatter."""
    wire_bytes(collective, 0, world_size)  # validates both arguments
    return (2 if collective == "all_reduce" else 1) * (world_size - 1)


def collective_time(collective: str, nbytes: float, world_size: int, alpha: float, beta: float) -> float:
    """Hockney / ring model: ``t = steps * alpha + wire_bytes / beta`` seconds (``alpha`` s per step,
    ``beta`` bytes/s of each rank's link; wire bytes from :func:`rlref.distributed.wire_bytes`)."""
    return collective_steps(collective, world_size) * _pos("alpha", alpha, True) \
        + wire_bytes(collective, nbytes, world_size) / _pos("beta", beta)


def fit_alpha_beta(collective: str, sizes: Sequence[float], seconds: Sequence[float],
                   world_size: int) -> tuple[float, float]:
    """Least-squares fit of ``t = steps * alpha + wire / beta`` to measured times; ``(alpha, beta)``.

    Fitted in relative error (each row divided by its time), so small and large buffers weigh alike.
    ``alpha`` is clipped at 0 (a negative intercept means the latency is below the noise)."""
    sizes, seconds = list(sizes), list(seconds)
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ValueError("sizes and seconds must have equal length >= 2")
    steps = collective_steps(collective, world_size)
    t = np.array([_pos("seconds", s) for s in seconds])
    X = np.column_stack([np.full(len(t), steps), [wire_bytes(collective, n, world_size) for n in sizes]])
    coef, *_ = np.linalg.lstsq(X / t[:, None], np.ones(len(t)), rcond=None)
    alpha, inv_beta = float(coef[0]), float(coef[1])
    if inv_beta <= 0:
        raise ValueError("the fitted time does not grow with size: no bandwidth term")
    if alpha < 0:
        alpha = 0.0
        inv_beta = float(np.sum(X[:, 1] / t) / np.sum((X[:, 1] / t) ** 2))
    return alpha, 1.0 / inv_beta


def dp_step_comm_bytes(strategy: str, n_params: float, world_size: int, micro_batches: int,
                       param_bytes: int = 2, grad_bytes: int = 4, defer_grad_sync: bool = True,
                       root_fraction: float = 0.0) -> dict[str, float]:
    """Wire bytes per rank per **optimizer step** with ``M = micro_batches`` forward/backward passes.

    DDP: one gradient all-reduce per step with ``no_sync`` on all but the last micro-batch
    (``defer_grad_sync``), else ``M``. FSDP2: the parameters are all-gathered in every micro-batch,
    twice for resharded blocks (forward and backward) and once for the root
    (``root_fraction`` of ``n_params``), so ``M (2 - root_fraction)`` gathers; the gradient
    reduce-scatter runs once per step when deferred (NeMo RL's ``dtensor_cfg.defer_fsdp_grad_sync``,
    default True, nemo_rl/models/automodel/setup.py:491), else ``M`` times."""
    if strategy not in ("ddp", "fsdp2"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp2', got {strategy!r}")
    n = _pos("n_params", n_params)
    M = _int("micro_batches", micro_batches)
    if not (isinstance(root_fraction, (int, float)) and 0 <= root_fraction <= 1):
        raise ValueError(f"root_fraction must be in [0, 1], got {root_fraction!r}")
    syncs = 1 if defer_grad_sync else M
    if strategy == "ddp":
        return {"all_reduce": syncs * wire_bytes("all_reduce", grad_bytes * n, world_size)}
    gathers = M * (2 - root_fraction)
    return {"all_gather": gathers * wire_bytes("all_gather", param_bytes * n, world_size),
            "reduce_scatter": syncs * wire_bytes("reduce_scatter", grad_bytes * n, world_size)}


def exposed_comm_time(comm_seconds: float, overlappable_compute_seconds: float) -> float:
    """Communication left on the critical path when it overlaps compute perfectly:
    ``max(0, t_comm - t_compute)`` (DDP buckets during backward, FSDP2 prefetch of the next block)."""
    return max(0.0, _pos("comm_seconds", comm_seconds, True)
               - _pos("overlappable_compute_seconds", overlappable_compute_seconds, True))


# --------------------------------------------------------------------------------------------------
# Refit, MFU vs HFU, padding
# --------------------------------------------------------------------------------------------------


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Ordinary least squares ``y = a + b x``; returns ``(a, b, r2)``."""
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    if x.shape != y.shape or x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fit_line needs >= 2 points of equal length with distinct x")
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    ss = float(np.sum((y - y.mean()) ** 2))
    return float(a), float(b), 1.0 - float(np.sum(resid ** 2)) / ss if ss > 0 else 1.0


def refit_seconds(weight_bytes: float, bandwidth: float, latency: float = 0.0) -> float:
    """Refit time model: ``latency + weight_bytes / bandwidth`` (CUDA IPC when colocated, NCCL otherwise;
    NeMo RL times it as ``prepare_for_generation/transfer_and_update_weights``)."""
    transfer = _pos("weight_bytes", weight_bytes, True) / _pos("bandwidth", bandwidth)
    return _pos("latency", latency, True) + transfer


def hfu_over_mfu(recompute_fraction_of_forward: float = 1.0) -> float:
    """Hardware FLOPs over model FLOPs when activation checkpointing recomputes a share ``r`` of the
    forward: ``(1 + 2 + r) / 3`` (forward, backward = 2 forwards, recompute), 4/3 for full recompute.
    torch's non-reentrant checkpoint stops recomputing once backward has what it needs (early stop),
    so ``r`` can be below 1 even with every block checkpointed."""
    r = recompute_fraction_of_forward
    if not (isinstance(r, (int, float)) and 0 <= r <= 1):
        raise ValueError(f"recompute_fraction_of_forward must be in [0, 1], got {r!r}")
    return (3 + r) / 3


def real_vs_padded_flops(lengths: Sequence[int], flops_of_length) -> tuple[float, float]:
    """``(sum_i F(len_i), n * F(max len))``: FLOPs counted on real lengths (NeMo RL's tracker,
    ``track_batch(input_lengths)``, nemo_rl/models/policy/lm_policy.py:786-790) against the FLOPs a
    padded batch executes. Their ratio is the MFU a padded run reports over the utilisation it really has."""
    lengths = [_int("length", int(v)) if not isinstance(v, bool) else _int("length", v) for v in lengths]
    if not lengths:
        raise ValueError("lengths is empty")
    real = float(sum(flops_of_length(s) for s in lengths))
    return real, float(len(lengths) * flops_of_length(max(lengths)))


# --------------------------------------------------------------------------------------------------
# Model-specific FLOPs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderConfig:
    """The shape of a decoder-only model (Hugging Face ``config.json`` names in comments)."""

    name: str
    hidden: int            # hidden_size
    layers: int            # num_hidden_layers
    heads: int             # num_attention_heads
    kv_heads: int          # num_key_value_heads
    head_dim: int          # head_dim (hidden / heads unless set)
    ffn: int               # intermediate_size (dense MLP) or moe_intermediate_size (one expert)
    vocab: int             # vocab_size
    tied: bool             # tie_word_embeddings
    experts: int = 0       # num_experts (0 = dense)
    top_k: int = 0         # num_experts_per_tok
    dense_ffn: int = 0     # intermediate_size of an MoE config (what NeMo RL's qwen3 formula reads)
    family: str = "llama"  # which NeMo RL formula: "llama", "qwen2" or "qwen3"
    source: str = ""

    def attn_params(self) -> int:
        """Q, K, V and O projections of one layer: ``h d (2 n_q + 2 n_kv)``."""
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)

    def mlp_params(self, active: bool) -> int:
        """Gated MLP(s) of one layer: ``3 h f`` (dense), ``E * 3 h f`` total or ``k * 3 h f`` active."""
        per = 3 * self.hidden * self.ffn
        if not self.experts:
            return per
        return per * (self.top_k if active else self.experts) + self.hidden * self.experts  # + router

    def params(self, active: bool = False) -> int:
        """Matmul + embedding parameters (norms and biases left out): ``L (attn + mlp) + V h (1 or 2)``."""
        emb = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (self.attn_params() + self.mlp_params(active)) + emb

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """KV cache per token: ``2 L n_kv d b`` (keys and values of every layer)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_element


MODEL_CONFIGS: dict[str, DecoderConfig] = {
    "Qwen2.5-1.5B": DecoderConfig("Qwen2.5-1.5B", 1536, 28, 12, 2, 128, 8960, 151936, True, family="qwen2",
                                  source="huggingface.co/Qwen/Qwen2.5-1.5B config.json"),
    "Llama-3.1-8B": DecoderConfig("Llama-3.1-8B", 4096, 32, 32, 8, 128, 14336, 128256, False, family="llama",
                                  source="huggingface.co/meta-llama/Llama-3.1-8B config.json"),
    "Qwen3-30B-A3B": DecoderConfig("Qwen3-30B-A3B", 2048, 48, 32, 4, 128, 768, 151936, False, experts=128,
                                   top_k=8, dense_ffn=6144, family="qwen3",
                                   source="huggingface.co/Qwen/Qwen3-30B-A3B config.json"),
}


def exact_matmul_flops_per_token(cfg: DecoderConfig, seq_len: int, causal_half: bool = True) -> float:
    """Training matmul FLOPs per token that the model really executes (active experts only):
    ``6 [L (attn + active mlp) + V h] + 6 L s n_q d c``, with ``c = 1`` when the causal attention
    square is counted as half (2 matmuls x half of ``s``), 2 for the full square."""
    s = _int("seq_len", seq_len)
    if not isinstance(cfg, DecoderConfig):
        raise TypeError(f"cfg must be a DecoderConfig, got {type(cfg).__name__}")
    lin = cfg.layers * (cfg.attn_params() + 3 * cfg.hidden * cfg.ffn * (cfg.top_k or 1)) \
        + cfg.vocab * cfg.hidden
    attn = cfg.layers * s * cfg.heads * cfg.head_dim * (1 if causal_half else 2)
    return 6.0 * (lin + attn)


def nemo_rl_flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token by the formula NeMo RL's tracker picks for ``cfg.family``
    (nemo_rl/utils/flops_tracker.py:47-80; formulas nemo_rl/utils/flops_formulas.py:73-222):

    - llama (73-88): ``L h^2 (12 + 12 n_kv/n_q + 18 f/h + 6 s/h + 6 V/(L h))``;
    - qwen2 (127-167): ``6 L h^2 (3 + 1 + s/h) + 18 L h f + 6 h V``: Q, K and V counted as
      ``3 h^2`` whatever ``n_kv`` is (no GQA; the FLOPSConfig of Qwen2 has no query_groups);
    - qwen3 (170-222): ``6 L (2 h q + 2 h kv + s q) + 18 L h f' + 6 h V`` with ``q = n_q d``,
      ``kv = n_kv d`` and ``f' = intermediate_size`` (MoE configs too: ``moe_router_topk = 1``).
    """
    s = _int("seq_len", seq_len)
    L, h, V = cfg.layers, cfg.hidden, cfg.vocab
    if cfg.family == "llama":
        g = cfg.kv_heads / cfg.heads
        return L * h * h * (12 + 12 * g + 18 * cfg.ffn / h + 6 * s / h + 6 * V / (L * h))
    if cfg.family == "qwen2":
        return 6 * L * h * h * (3 + s / h + 1) + 18 * L * h * cfg.ffn + 6 * h * V
    if cfg.family == "qwen3":
        q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        f = cfg.dense_ffn or cfg.ffn
        return 6 * L * (2 * q * h + 2 * kv * h + s * q) + 18 * L * h * f + 6 * h * V
    raise ValueError(f"cfg.family must be 'llama', 'qwen2' or 'qwen3', got {cfg.family!r}")


# --------------------------------------------------------------------------------------------------
# Async efficiency and host syncs
# --------------------------------------------------------------------------------------------------

WALL_CLOCK_CATEGORIES = ("init/total", "idle/buffer_starvation", "idle/refit_bubble", "idle/validation")
THREAD_CATEGORIES = ("idle/buffer_full_backoff", "idle/generation_limit_pause", "idle/refit_event_wait",
                     "wasted/failed_trajectory")


def efficiency_summary(seconds: Mapping[str, float], total_wall_s: float) -> dict[str, float]:
    """NeMo RL's async ``efficiency/*`` metrics (nemo_rl/algorithms/utils.py:942-1031): wall-clock waste
    ``W = min(T, sum of the driver's categories)``, ``efficiency_pct = 100 (T - W) / T``; collector-thread
    categories are summed as thread-seconds and kept out of the percentage."""
    T = _pos("total_wall_s", total_wall_s)
    unknown = set(seconds) - set(WALL_CLOCK_CATEGORIES) - set(THREAD_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown efficiency categories: {sorted(unknown)}")
    out: dict[str, float] = {}
    for c in WALL_CLOCK_CATEGORIES:
        d = _pos(c, seconds.get(c, 0.0), True)
        out[f"efficiency/{c}_s"] = d
        out[f"efficiency/{c}_pct"] = 100 * d / T
    out["efficiency/thread_seconds_total_s"] = sum(_pos(c, seconds.get(c, 0.0), True)
                                                   for c in THREAD_CATEGORIES)
    waste = min(T, sum(seconds.get(c, 0.0) for c in WALL_CLOCK_CATEGORIES))
    out["efficiency/total_waste_s"] = waste
    out["efficiency/productive_time_s"] = T - waste
    out["efficiency/efficiency_pct"] = 100 * (T - waste) / T
    return out


class HostSyncCounter:
    """Count calls that copy a tensor value to the host (``.item()``, ``.tolist()``, ``int``/``float``/
    ``bool`` of a tensor) while active: on a GPU each one waits for every queued kernel.

    ``with HostSyncCounter() as c: step()`` then ``c.count`` and ``c.by_kind``."""

    _METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}
        self._saved: dict[str, object] = {}
        self._depth = 0

    @property
    def count(self) -> int:
        return sum(self.by_kind.values())

    def __enter__(self) -> HostSyncCounter:
        if self._saved:
            raise RuntimeError("this HostSyncCounter is already active")
        for name in self._METHODS:
            orig = getattr(torch.Tensor, name)
            self._saved[name] = orig

            def wrapper(t, *a, _orig=orig, _name=name, **k):
                if self._depth == 0:
                    self.by_kind[_name] = self.by_kind.get(_name, 0) + 1
                self._depth += 1
                try:
                    return _orig(t, *a, **k)
                finally:
                    self._depth -= 1

            setattr(torch.Tensor, name, wrapper)
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(torch.Tensor, name, fn)
        self._saved.clear()
