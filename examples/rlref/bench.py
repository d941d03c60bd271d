"""Benchmarking and number-format helpers shared by the performance pages.

Timing
    :func:`time_wall` (``time.perf_counter`` with device synchronisation), :func:`time_cuda_events`
    (CUDA events, GPU only), :func:`interleave` (several candidates measured in alternating rounds so
    that machine noise hits them alike), :func:`summarize` (median and inter-quartile range) and
    :func:`paired_ratios` (one ratio per round).
Throughput
    :func:`matmul_flops`, :func:`transformer_flops_per_token` (the analytic model-FLOPs count NeMo RL's
    FLOPs tracker uses for Llama-style models), :func:`tokens_per_sec`, :func:`mfu` and
    :data:`PEAK_TFLOPS` (NeMo RL's dense peak table, nemo_rl/utils/flops_tracker.py:114-129, plus the
    H200 NVL).
Number formats
    :func:`float_format_table` (range, epsilon and precision of a dtype from ``torch.finfo``),
    :func:`smallest_subnormal`, :func:`logprobs_in_precision` and :func:`clip_fraction`.

Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "PEAK_TFLOPS",
    "Summary",
    "clip_fraction",
    "policy_gradient_logit_grad",
    "environment_line",
    "float_format_table",
    "interleave",
    "logprobs_in_precision",
    "matmul_flops",
    "mfu",
    "paired_ratios",
    "peak_tflops",
    "smallest_subnormal",
    "summarize",
    "synchronize",
    "time_cuda_events",
    "time_wall",
    "tokens_per_sec",
    "transformer_flops_per_token",
    "transformer_train_flops",
]


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def _nvml_details(index: int) -> str:
    """Driver, SM clock (current/max), power limit, MIG and ECC state and GPU count from NVML, or a
    note saying NVML was not readable (``pynvml`` missing, no driver): the line degrades, never fails."""
    try:
        import pynvml  # shipped with torch's CUDA wheels as nvidia-ml-py; optional
    except ImportError:
        return "NVML not available"
    try:
        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            drv = pynvml.nvmlSystemGetDriverVersion()
            drv = drv.decode() if isinstance(drv, bytes) else drv
            sm = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
            sm_max = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
            power = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
            parts = [f"driver {drv}", f"SM {sm}/{sm_max} MHz", f"power cap {power:.0f} W"]
            for label, fn in (("MIG", pynvml.nvmlDeviceGetMigMode), ("ECC", pynvml.nvmlDeviceGetEccMode)):
                try:
                    parts.append(f"{label} {'on' if fn(h)[0] else 'off'}")
                except pynvml.NVMLError:
                    parts.append(f"{label} n/a")
            parts.append(f"{pynvml.nvmlDeviceGetCount()} GPU(s) visible to NVML")
            return ", ".join(parts)
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # any NVML failure: report it instead of failing the measurement
        return f"NVML query failed ({type(e).__name__})"


def environment_line(device: torch.device | str | None = None) -> str:
    """One line to print beside every measured number: device, torch (and CUDA) version, UTC time.

    On CUDA it adds the driver, SM clock (current/max), power cap, MIG/ECC state and GPU count from
    NVML when ``pynvml`` can read them (results are compared against a boost-clock peak)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, "
                f"{torch.cuda.device_count()} CUDA device(s), {_nvml_details(index)}")
    else:
        name = f"CPU {platform.machine()} ({_cpu_model()}), {torch.get_num_threads()} threads"
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"[measured on {name}; torch {torch.__version__}; {now}]"


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for every queued kernel on ``device`` (a no-op on CPU, where ops run synchronously)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_wall(fn: Callable[[], object], repeats: int = 10, warmup: int = 1, number: int = 1,
              device: torch.device | str | None = None) -> list[float]:
    """Seconds per call of ``fn()``, one value per repeat, from ``time.perf_counter``.

    ``warmup`` untimed calls run first. Each repeat times ``number`` back-to-back calls and divides by
    ``number``. On a CUDA ``device`` the clock is read only after ``torch.cuda.synchronize``, before
    and after each repeat, so queued kernels are counted (without it one times the kernel launches).
    """
    import time

    _check_callable("fn", fn)
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    _check_count("number", number, 1)
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        synchronize(device)
        out.append((time.perf_counter() - t0) / number)
    return out


def time_cuda_events(fn: Callable[[], object], repeats: int = 10, warmup: int = 1,
                     number: int = 1) -> list[float]:
    """Seconds per call of ``fn()`` measured by CUDA events on the current stream (GPU time).

    Events are recorded around each repeat of ``number`` calls; one synchronisation at the end
    reads them all, so the host never stalls between repeats. Raises ``RuntimeError`` without CUDA.
    """
    _check_callable("fn", fn)
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    _check_count("number", number, 1)
    if not torch.cuda.is_available():
        raise RuntimeError("time_cuda_events needs a CUDA device; use time_wall on CPU")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 / number for s, e in pairs]  # elapsed_time is in milliseconds


def interleave(fns: Mapping[str, Callable[[], object]], rounds: int = 10, warmup: int = 1, number: int = 1,
               device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Time several candidates in alternating rounds; ``{name: [seconds per call, one per round]}``.

    Round ``i`` runs every candidate once (``number`` calls each), starting at candidate ``i mod k``
    so that no candidate always runs first. A slow phase of the machine then lands on all candidates
    of a round, and the per-round ratios (:func:`paired_ratios`) cancel it.
    """
    if not isinstance(fns, Mapping) or len(fns) < 1:
        raise ValueError("fns must be a non-empty mapping of name -> callable")
    for name, fn in fns.items():
        _check_callable(f"fns[{name!r}]", fn)
    _check_count("rounds", rounds, 1)
    _check_count("warmup", warmup, 0)
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    k = len(names)
    for i in range(rounds):
        for j in range(k):
            name = names[(i + j) % k]
            out[name].append(time_wall(fns[name], repeats=1, warmup=0, number=number, device=device)[0])
    return out


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated measurements (seconds, or any positive unit)."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        """Inter-quartile range ``q3 - q1``."""
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """``iqr / median``: the spread as a fraction of the typical value."""
        return self.iqr / self.median if self.median else math.inf

    def fmt(self, scale: float = 1e3, unit: str = "ms", digits: int = 4) -> str:
        """``median [q1, q3] unit (n=...)`` with values multiplied by ``scale``."""
        g = f".{digits}g"
        med, q1, q3 = (v * scale for v in (self.median, self.q1, self.q3))
        return f"{med:{g}} {unit} [IQR {q1:{g}}-{q3:{g}}] (n={self.n})"


def summarize(samples: Sequence[float]) -> Summary:
    """Median, quartiles (linear interpolation, as ``numpy.percentile``), min and max of ``samples``."""
    a = np.asarray(list(samples), dtype=float)
    if a.size == 0:
        raise ValueError("summarize needs at least one sample")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"samples must be finite, got {a.tolist()}")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Summary(n=int(a.size), median=float(med), q1=float(q1), q3=float(q3), min=float(a.min()),
                   max=float(a.max()))


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``[a_i / b_i]``: one ratio per interleaved round (> 1 means ``a`` was slower in that round)."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired_ratios needs two non-empty sequences of equal length, got {len(a)} and {len(b)}"
        )
    if any((not math.isfinite(x)) or x <= 0 for x in a + b):
        raise ValueError("paired_ratios needs positive finite times")
    return [x / y for x, y in zip(a, b, strict=True)]


# --------------------------------------------------------------------------------------------------
# FLOPs, throughput and utilisation
# --------------------------------------------------------------------------------------------------

# Dense peak TFLOP/s per GPU, as NeMo RL's table lists them (nemo_rl/utils/flops_tracker.py:114-129),
# plus the H200 NVL: the bf16 entries are half the vendor's with-sparsity figure. fp32 entries assume
# TF32 is off.
PEAK_TFLOPS: dict[tuple[str, torch.dtype], float] = {
    ("NVIDIA A100 80GB PCIe", torch.bfloat16): 312.0,
    ("NVIDIA A100 80GB PCIe", torch.float32): 19.5,
    ("NVIDIA H100 80GB HBM3", torch.bfloat16): 989.5,
    ("NVIDIA H100 80GB HBM3", torch.float32): 67.0,
    ("NVIDIA H200", torch.bfloat16): 989.5,
    ("NVIDIA H200", torch.float32): 67.0,
    # Not in NeMo RL's table (its exact lookup raises for this name): the H200 NVL board's datasheet
    # lists 1,671 TFLOPS bf16 with sparsity (835.5 dense) and 60 TFLOPS fp32.
    ("NVIDIA H200 NVL", torch.bfloat16): 835.5,
    ("NVIDIA H200 NVL", torch.float32): 60.0,
    ("NVIDIA B200", torch.bfloat16): 2250.0,
    ("NVIDIA B200", torch.float32): 80.0,
    ("NVIDIA B300", torch.bfloat16): 2250.0,
    ("NVIDIA B300", torch.float32): 80.0,
    ("NVIDIA GB200", torch.bfloat16): 2450.0,
    ("NVIDIA GB200", torch.float32): 80.0,
    ("NVIDIA GB300", torch.bfloat16): 2450.0,
    ("NVIDIA GB300", torch.float32): 80.0,
}


def peak_tflops(device_name: str, dtype: torch.dtype = torch.bfloat16) -> float:
    """Dense peak TFLOP/s of one GPU from :data:`PEAK_TFLOPS`; ``ValueError`` for an unlisted device.

    Names are matched exactly first, then by prefix of the listed name (``torch.cuda.get_device_name``
    may append a suffix); the longest listed name wins, so ``"NVIDIA H200 NVL"`` gets its own, lower
    entry and not the SXM part's 989.5.
    """
    if not isinstance(device_name, str):
        raise TypeError(f"device_name must be a str, got {type(device_name).__name__}")
    if (device_name, dtype) in PEAK_TFLOPS:
        return PEAK_TFLOPS[(device_name, dtype)]
    matches = [(n, d) for (n, d) in PEAK_TFLOPS if d == dtype and device_name.startswith(n)]
    if not matches:
        listed = sorted({n for n, _ in PEAK_TFLOPS})
        raise ValueError(f"no peak TFLOP/s for ({device_name!r}, {dtype}); listed devices: {listed}")
    return PEAK_TFLOPS[max(matches, key=lambda k: len(k[0]))]


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of ``[m, k] @ [k, n]``: ``2 m n k`` (one multiply and one add per term)."""
    for name, v in (("m", m), ("n", n), ("k", k)):
        _check_count(name, v, 1)
    return 2 * m * n * k


def transformer_flops_per_token(n_layers: int, d_model: int, d_ff: int, vocab_size: int, seq_len: int,
                                kv_ratio: float = 1.0, gated_mlp: bool = True, causal: bool = True) -> float:
    r"""Forward matmul FLOPs per token of a decoder-only transformer (training costs 3x this).

    With ``L`` layers, width ``h``, MLP width ``f``, vocabulary ``V``, sequence length ``s`` and
    ``g = kv_ratio`` (key/value heads over query heads)::

        F_fwd = 2 [ L (2 h^2 + 2 g h^2 + m h f) + h V ] + c L s h

    where ``m = 3`` for a gated (SwiGLU) MLP and 2 otherwise, and the attention scores and weighted
    values cost ``c = 2`` per token per layer with a causal mask counted as half the square, 4 for
    the full square. Three times this, ``L h^2 (12 + 12 g + 18 f/h + 6 s/h + 6 V/(L h))`` for a gated
    MLP with ``c = 2``, is the Llama formula of NeMo RL's FLOPs tracker (used for
    ``train_fp_utilization``, nemo_rl/utils/flops_tracker.py:43-102). Embedding lookups, norms,
    softmax and activations are not counted.
    """
    for name, v in (("n_layers", n_layers), ("d_model", d_model), ("d_ff", d_ff), ("vocab_size", vocab_size),
                    ("seq_len", seq_len)):
        _check_count(name, v, 1)
    if not (isinstance(kv_ratio, (int, float)) and 0 < kv_ratio <= 1):
        raise ValueError(f"kv_ratio must be in (0, 1], got {kv_ratio!r}")
    L, h, f, V, s = n_layers, d_model, d_ff, vocab_size, seq_len
    m = 3 if gated_mlp else 2
    c = 2 if causal else 4
    return 2 * (L * (2 * h * h + 2 * kv_ratio * h * h + m * h * f) + h * V) + c * L * s * h


def transformer_train_flops(num_tokens: int, **shape) -> float:
    """FLOPs of one training step (forward + backward = 3 x forward) over ``num_tokens`` tokens."""
    _check_count("num_tokens", num_tokens, 1)
    return 3 * num_tokens * transformer_flops_per_token(**shape)


def tokens_per_sec(num_tokens: float, seconds: float, num_gpus: int = 1) -> float:
    """``num_tokens / seconds / num_gpus`` (NeMo RL's ``performance/tokens_per_sec`` uses num_gpus=1 and
    the step's ``total_num_tokens``; the ``*_per_gpu`` variants divide by the GPU count)."""
    if not (isinstance(num_tokens, (int, float)) and num_tokens >= 0):
        raise ValueError(f"num_tokens must be a non-negative number, got {num_tokens!r}")
    if not (isinstance(seconds, (int, float)) and seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    _check_count("num_gpus", num_gpus, 1)
    return num_tokens / seconds / num_gpus


def mfu(flops: float, seconds: float, peak_tflops_per_gpu: float, num_gpus: int = 1) -> float:
    """Model FLOPs utilisation: ``(flops / seconds) / (num_gpus * peak)``, peak in TFLOP/s.

    NeMo RL's ``train_fp_utilization`` is this ratio with the training FLOPs of the step (counted on
    the real sequence lengths), the peak table summed over ranks and, as the time, the Megatron
    worker's synchronised ``train_elapsed_seconds`` or, on DTensor (which does not return it), the
    driver's ``policy_training`` timer (nemo_rl/algorithms/utils.py:865-868).
    """
    if not (isinstance(flops, (int, float)) and flops >= 0):
        raise ValueError(f"flops must be a non-negative number, got {flops!r}")
    if not (isinstance(seconds, (int, float)) and seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    if not (isinstance(peak_tflops_per_gpu, (int, float)) and peak_tflops_per_gpu > 0):
        raise ValueError(f"peak_tflops_per_gpu must be positive, got {peak_tflops_per_gpu!r}")
    _check_count("num_gpus", num_gpus, 1)
    return flops / seconds / (num_gpus * peak_tflops_per_gpu * 1e12)


# --------------------------------------------------------------------------------------------------
# Number formats
# --------------------------------------------------------------------------------------------------


def _check_float_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"expected a floating torch.dtype, got {dtype!r}")
    return dtype


def smallest_subnormal(dtype: torch.dtype) -> float:
    """Smallest positive value of ``dtype``: ``smallest_normal * eps`` (``2^(emin - mantissa bits)``)."""
    fi = torch.finfo(_check_float_dtype(dtype))
    return fi.smallest_normal * fi.eps


def float_format_table(dtypes: Sequence[torch.dtype]) -> list[dict[str, object]]:
    """One row per dtype from ``torch.finfo``: bits, exponent and mantissa bits, eps, range, digits.

    ``mantissa_bits = -log2(eps)`` (stored fraction bits), ``exponent_bits = bits - 1 - mantissa_bits``,
    ``decimal_digits = (mantissa_bits + 1) * log10(2)``, counting the implicit leading bit (bf16: 2.4):
    the relative rounding error is at most ``eps / 2``.
    """
    rows = []
    for dt in dtypes:
        fi = torch.finfo(_check_float_dtype(dt))
        mant = round(-math.log2(fi.eps))
        rows.append({
            "dtype": str(dt).replace("torch.", ""),
            "bits": fi.bits,
            "exponent_bits": fi.bits - 1 - mant,
            "mantissa_bits": mant,
            "eps": fi.eps,
            "max": fi.max,
            "smallest_normal": fi.smallest_normal,
            "smallest_subnormal": smallest_subnormal(dt),
            "decimal_digits": (mant + 1) * math.log10(2),
        })
    return rows


def logprobs_in_precision(logits: torch.Tensor, tokens: torch.Tensor, logits_dtype: torch.dtype,
                          compute_dtype: torch.dtype) -> torch.Tensor:
    """Log-probs of ``tokens`` when logits are stored in ``logits_dtype`` and ``log_softmax`` runs in
    ``compute_dtype``; returned in float64 for comparison.

    ``logits`` ``[N, V]`` (any float dtype), ``tokens`` ``[N]`` int64. ``(bfloat16, bfloat16)`` is a
    model that stays in bf16 to the end; ``(bfloat16, float32)`` is bf16 logits up-cast before the
    softmax (NeMo RL computes the loss math in fp32, nemo_rl/algorithms/loss/loss_functions.py:223);
    ``(float32, float32)`` is the fp32 path.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        raise ValueError("logits must be a floating tensor [N, V]")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64\
            or tokens.shape != logits.shape[:1]:
        raise ValueError(f"tokens must be an int64 tensor of shape [{logits.shape[0]}]")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= logits.shape[1]):
        raise ValueError(f"tokens must lie in [0, {logits.shape[1]})")
    _check_float_dtype(logits_dtype)
    _check_float_dtype(compute_dtype)
    x = logits.to(logits_dtype).to(compute_dtype)
    lp = torch.log_softmax(x, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return lp.to(torch.float64)


def clip_fraction(ratio: torch.Tensor, mask: torch.Tensor | None = None, ratio_clip_min: float = 0.2,
                  ratio_clip_max: float = 0.2) -> float:
    """Fraction of (masked) tokens whose ratio lies outside ``[1 - ratio_clip_min, 1 + ratio_clip_max]``.

    Not a NeMo RL metric (it logs ``probs_ratio`` and ``probs_ratio_clamped`` means and extremes); the
    usual PPO diagnostic, with NeMo RL's clip-range keys.
    """
    if not isinstance(ratio, torch.Tensor):
        raise TypeError(f"ratio must be a torch.Tensor, got {type(ratio).__name__}")
    if mask is None:
        mask = torch.ones_like(ratio)
    if mask.shape != ratio.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != ratio shape {tuple(ratio.shape)}")
    for name, v in (("ratio_clip_min", ratio_clip_min), ("ratio_clip_max", ratio_clip_max)):
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")
    m = mask.to(torch.float64)
    total = float(m.sum())
    if total == 0:
        raise ValueError("mask selects no tokens")
    out = ((ratio < 1 - ratio_clip_min) | (ratio > 1 + ratio_clip_max)).to(torch.float64)
    return float((out * m).sum()) / total


def policy_gradient_logit_grad(logits: torch.Tensor, tokens: torch.Tensor, advantages: torch.Tensor,
                               global_valid_toks: float) -> torch.Tensor:
    r"""Gradient of ``L = -(1/G) sum_i A_i log softmax(z_i)[y_i]`` with respect to the logits ``z``.

    ``dL/dz_{i,v} = -(A_i / G) (1[v = y_i] - softmax(z_i)_v)`` (``G = global_valid_toks``, NeMo RL's
    token-level normalisation). With ``G`` in the hundreds of thousands and ``softmax ~ 1/V``, most
    entries are far below fp16's smallest subnormal, which is why fp16 training needs loss scaling.
    ``logits`` ``[N, V]``, ``tokens`` ``[N]`` int64, ``advantages`` ``[N]``.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        raise ValueError("logits must be a floating tensor [N, V]")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 \
            or tokens.shape != logits.shape[:1]:
        raise ValueError(f"tokens must be an int64 tensor of shape [{logits.shape[0]}]")
    if not isinstance(advantages, torch.Tensor) or advantages.shape != logits.shape[:1]:
        raise ValueError(f"advantages must be a tensor of shape [{logits.shape[0]}]")
    if not (isinstance(global_valid_toks, (int, float)) and global_valid_toks > 0):
        raise ValueError(f"global_valid_toks must be positive, got {global_valid_toks!r}")
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    onehot = torch.nn.functional.one_hot(tokens, logits.shape[1]).to(torch.float64)
    return -(advantages.to(torch.float64)[:, None] / global_valid_toks) * (onehot - p)
