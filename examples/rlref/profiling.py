"""Profiling helpers: named phases of an RL step, profiler range totals, trace files, Amdahl's bound.

- :func:`phase` opens a ``torch.profiler.record_function`` range (and, on CUDA, an NVTX range that
  Nsight Systems shows) and adds the phase's wall-clock seconds to a dict. The phase names in
  :data:`PHASES` are NeMo RL's GRPO timer labels (``timing/train/<label>``,
  nemo_rl/algorithms/grpo.py:1752,2347,2832-3569), so a profile of the lab reads like NeMo RL's
  timing table.
- :func:`range_totals` reads the ranges back from a finished profiler; :func:`write_trace` and
  :func:`read_trace` write and load a gzipped Chrome-trace JSON (Perfetto and ``chrome://tracing``
  open it); :func:`trace_ranges` lists the durations of named ranges in a trace.
- :func:`amdahl_speedup`: the step speedup when one phase gets faster.
- :func:`compile_unavailable`: why ``torch.compile`` cannot build kernels on this machine (None if it can),
  so a notebook can skip its compiled variant with the reason printed.
- :func:`nsys_step_range`: which steps ``NRL_NSYS_PROFILE_STEP_RANGE`` selects (``start:stop``, start
  >= 1 and inclusive, stop exclusive; nemo_rl/utils/nsys.py:22-53).

NeMo RL itself has no ``torch.profiler`` integration; this module is a recipe. Nothing here imports
``nemo_rl``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = [
    "PHASES",
    "amdahl_speedup",
    "compile_unavailable",
    "nsys_step_range",
    "ops_by_range",
    "phase",
    "quiet_native_stderr",
    "range_totals",
    "read_trace",
    "trace_ranges",
    "write_trace",
]

#: The phases of a GRPO step, named as NeMo RL's timers name them.
PHASES = ("generation", "policy_and_reference_logprobs", "advantage_calculation", "policy_training")


@contextlib.contextmanager
def phase(name: str, timings: dict[str, float] | None = None):
    """A named range for the profilers, plus wall-clock accounting.

    Opens ``torch.profiler.record_function(name)`` (a range in torch.profiler's tables and traces)
    and, when CUDA is available, ``torch.cuda.nvtx.range(name)`` (a range on Nsight Systems'
    timeline). If ``timings`` is given, the phase's wall-clock seconds are added to
    ``timings[name]``; on CUDA the clock is read after ``torch.cuda.synchronize()`` so queued
    kernels count in the phase that launched them.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"phase name must be a non-empty str, got {name!r}")
    if timings is not None and not isinstance(timings, dict):
        raise TypeError(f"timings must be a dict or None, got {type(timings).__name__}")
    cuda = torch.cuda.is_available()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.profiler.record_function(name))
        if cuda:
            stack.enter_context(torch.cuda.nvtx.range(name))
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize()
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what C/C++ code writes to file descriptor 2 (not Python exceptions) while active.

    The profiler's backend (kineto) logs a ``profiler_start`` / ``profiler_stop`` line with a
    timestamp on native stderr each time it starts recording; in a notebook that line would make two
    runs of the same cell differ. Python-level ``sys.stderr`` writes are flushed before and after.
    """
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def range_totals(prof, names: Iterable[str]) -> dict[str, dict[str, float]]:
    """``{name: {"count", "cpu_s", "device_s"}}`` of each ``record_function`` range in a finished profile.

    ``cpu_s`` is the range's total CPU time (all calls, seconds), ``device_s`` the total device (CUDA)
    time of the kernels launched inside it (0 on CPU). A name that was never recorded raises
    ``KeyError``.
    """
    names = list(names)
    # With CUDA activity each range also appears as a GPU-side user annotation of the same name, a
    # separate key_averages entry (device_type is part of its key) with cpu_time_total 0: keep the CPU one.
    by_key = {e.key: e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU}
    out = {}
    for n in names:
        if n not in by_key:
            raise KeyError(f"range {n!r} not in the profile; recorded ranges include "
                           f"{sorted(k for k in by_key if not k.startswith(('aten::', 'cuda')))[:10]}")
        e = by_key[n]
        device_us = getattr(e, "device_time_total", 0.0) or 0.0
        out[n] = {"count": float(e.count), "cpu_s": e.cpu_time_total / 1e6, "device_s": device_us / 1e6}
    return out


def ops_by_range(prof, names: Iterable[str], top: int = 5) -> dict[str, list[tuple[str, float, int]]]:
    """The ops that spend the most *self* CPU time inside each named range of a finished profile.

    Each op event is assigned to the innermost enclosing range in ``names`` (walking its CPU
    parents). Returns ``{range: [(op name, self CPU seconds, calls), ...]}``, ``top`` entries per
    range, largest first.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    acc: dict[str, dict[str, list[float]]] = {n: {} for n in dict.fromkeys(names)}
    for ev in prof.events():
        if ev.name in acc:
            continue
        parent = ev.cpu_parent
        while parent is not None and parent.name not in acc:
            parent = parent.cpu_parent
        if parent is None:
            continue
        slot = acc[parent.name].setdefault(ev.name, [0.0, 0])
        slot[0] += ev.self_cpu_time_total / 1e6
        slot[1] += 1
    return {n: sorted(((op, t, int(c)) for op, (t, c) in ops.items()), key=lambda x: -x[1])[:top]
            for n, ops in acc.items()}


def write_trace(prof, path: str | Path) -> Path:
    """Export ``prof``'s Chrome trace to ``path`` (gzipped when it ends in ``.gz``); returns the path.

    torch exports a finished profile once; a second export raises ``RuntimeError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        raw = Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(raw, compresslevel=6, mtime=0))
    else:
        path.write_bytes(raw)
    return path


def read_trace(path: str | Path) -> dict:
    """Load a Chrome-trace JSON file (``.json`` or ``.json.gz``) as a dict with ``traceEvents``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no trace file at {str(path)!r}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    trace = json.loads(raw)
    if not isinstance(trace, dict) or "traceEvents" not in trace:
        raise ValueError(f"{path} is not a Chrome trace (no 'traceEvents')")
    return trace


def trace_ranges(trace: dict, names: Iterable[str]) -> dict[str, list[float]]:
    """Durations in seconds of the complete events (``ph == "X"``) named ``names`` in a Chrome trace.

    ``record_function`` ranges appear twice in PyTorch's traces when CUDA is on (a CPU-side
    ``user_annotation`` and a GPU-side ``gpu_user_annotation``); only the CPU side is returned.
    """
    out: dict[str, list[float]] = {n: [] for n in dict.fromkeys(names)}  # in the order given
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") == "X" and ev.get("name") in out and ev.get("cat") != "gpu_user_annotation":
            out[ev["name"]].append(float(ev.get("dur", 0.0)) / 1e6)
    return out


def amdahl_speedup(fraction: float, factor: float) -> float:
    """Whole-step speedup when a part taking ``fraction`` of the step runs ``factor`` times faster.

    ``1 / ((1 - f) + f / s)`` (Amdahl's law); ``factor=math.inf`` gives the ceiling ``1 / (1 - f)``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    rest = (1.0 - fraction) + (0.0 if math.isinf(factor) else fraction / factor)
    return math.inf if rest == 0 else 1.0 / rest


def nsys_step_range(value: str) -> range:
    """The steps that ``NRL_NSYS_PROFILE_STEP_RANGE=value`` profiles: ``range(start, stop)``.

    Format ``start:stop`` with integers, ``start >= 1`` (inclusive) and ``stop > start`` (exclusive),
    as documented for NeMo RL (nemo_rl/utils/nsys.py:22-53; docs/nsys-profiling.md:17-57). Anything
    else raises ``ValueError``.
    """
    if not isinstance(value, str):
        raise TypeError(f"NRL_NSYS_PROFILE_STEP_RANGE must be a str, got {type(value).__name__}")
    parts = value.split(":")
    if len(parts) != 2:
        raise ValueError(f"NRL_NSYS_PROFILE_STEP_RANGE must look like 'start:stop', got {value!r}")
    try:
        start, stop = (int(p) for p in parts)
    except ValueError as e:
        raise ValueError(f"NRL_NSYS_PROFILE_STEP_RANGE needs integers, got {value!r}") from e
    if start < 1:
        raise ValueError(f"the start step of NRL_NSYS_PROFILE_STEP_RANGE must be >= 1, got {value!r}")
    if stop <= start:
        raise ValueError(f"NRL_NSYS_PROFILE_STEP_RANGE must be a non-empty range, got {value!r}")
    return range(start, stop)


def compile_unavailable(device: str | torch.device = "cpu") -> str | None:
    """Why ``torch.compile`` (Inductor) cannot build kernels for ``device`` here, or None when it can.

    On CUDA, Inductor writes Triton kernels and Triton compiles a small C launcher: it needs the
    ``triton`` package, a C compiler (``$CC``, cc, gcc or clang) and Python's headers. On CPU Inductor
    compiles C++: a C++ compiler (``$CXX``, c++, g++ or clang++) and the headers. Not NeMo RL code; its
    counterpart is vLLM's ``enforce_eager`` (``policy.generation.vllm_cfg``), which skips compilation.
    """
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    missing = []
    if kind == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            missing.append("the triton package")
        compilers = (os.environ.get("CC"), "cc", "gcc", "clang")
    else:
        compilers = (os.environ.get("CXX"), "c++", "g++", "clang++")
    if not any(c and shutil.which(c) for c in compilers):
        names = ", ".join(c for c in compilers if c)
        missing.append(f"a {'C' if kind == 'cuda' else 'C++'} compiler ({names})")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        missing.append(f"Python's headers ({headers})")
    return "missing " + "; ".join(missing) if missing else None
