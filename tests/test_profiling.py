"""Tests for rlref.profiling: phases, profiler range totals, traces, Amdahl's bound, nsys step ranges."""

from __future__ import annotations

import gzip
import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from rlref import profiling as P


def _work(n: int = 64) -> torch.Tensor:
    a = torch.randn(n, n)
    return (a @ a).relu().sum()


@pytest.fixture(scope="module")
def small_profile():
    with P.quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with P.phase("outer"):
                _work()
                with P.phase("inner"):
                    _work()
    return prof


def test_phase_accumulates_wall_clock_seconds():
    timings = {}
    for _ in range(3):
        with P.phase("a", timings):
            _work(8)
    with P.phase("b", timings):
        pass
    assert set(timings) == {"a", "b"}
    assert timings["a"] > 0 and timings["b"] >= 0


def test_phase_records_time_even_when_the_body_raises():
    timings = {}
    with pytest.raises(RuntimeError), P.phase("boom", timings):
        raise RuntimeError("x")
    assert "boom" in timings


@pytest.mark.parametrize("bad", ["", None, 3])
def test_phase_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="phase name"), P.phase(bad):
        pass


def test_phase_rejects_non_dict_timings():
    with pytest.raises(TypeError, match="timings"), P.phase("a", timings=[]):
        pass


def test_range_totals_counts_each_range_and_nests_inner_in_outer(small_profile):
    totals = P.range_totals(small_profile, ["outer", "inner"])
    assert totals["outer"]["count"] == 2 and totals["inner"]["count"] == 2
    assert totals["outer"]["cpu_s"] >= totals["inner"]["cpu_s"] > 0
    assert totals["inner"]["device_s"] == 0.0  # CPU-only profile


def test_range_totals_keeps_the_cpu_entry_when_cuda_adds_a_user_annotation():
    """With CUDA activity, key_averages lists each range twice: on CPU and as a GPU user annotation.

    The GPU entry has the same key and cpu_time_total 0; listed last, it must not replace the CPU one.
    """
    from types import SimpleNamespace

    DT = torch.autograd.DeviceType
    cpu = SimpleNamespace(key="generation", device_type=DT.CPU, count=2, cpu_time_total=3e6,
                          device_time_total=1e6)
    gpu = SimpleNamespace(key="generation", device_type=DT.CUDA, count=2, cpu_time_total=0.0,
                          device_time_total=1.2e6)
    prof = SimpleNamespace(key_averages=lambda: [cpu, gpu])
    expected = {"generation": {"count": 2.0, "cpu_s": 3.0, "device_s": 1.0}}
    assert P.range_totals(prof, ["generation"]) == expected
    only_gpu = SimpleNamespace(key_averages=lambda: [gpu])
    with pytest.raises(KeyError, match="generation"):
        P.range_totals(only_gpu, ["generation"])


def test_range_totals_names_missing_ranges(small_profile):
    with pytest.raises(KeyError, match="never_recorded"):
        P.range_totals(small_profile, ["never_recorded"])


def test_ops_by_range_assigns_ops_to_the_innermost_named_range(small_profile):
    ops = P.ops_by_range(small_profile, ["outer", "inner"], top=10)
    inner_mm = {name: calls for name, _, calls in ops["inner"]}
    outer_mm = {name: calls for name, _, calls in ops["outer"]}
    # one matmul per call of each range, two calls each: the inner one is not counted in outer
    assert inner_mm["aten::mm"] == 2 and outer_mm["aten::mm"] == 2
    assert all(t >= 0 for _, t, _ in ops["outer"])
    with pytest.raises(ValueError, match="top"):
        P.ops_by_range(small_profile, ["outer"], top=0)


def test_write_and_read_trace_round_trip_gzip_and_plain(small_profile, tmp_path):
    gz = P.write_trace(small_profile, tmp_path / "sub" / "t.json.gz")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    plain = tmp_path / "t.json"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    trace = P.read_trace(gz)
    assert trace == P.read_trace(plain) == json.loads(plain.read_text())
    with pytest.raises(RuntimeError):  # torch exports a profile once
        P.write_trace(small_profile, tmp_path / "again.json")
    ranges = P.trace_ranges(trace, ["outer", "inner", "absent"])
    assert len(ranges["outer"]) == 2 and len(ranges["inner"]) == 2 and ranges["absent"] == []
    assert all(o >= i > 0 for o, i in zip(ranges["outer"], ranges["inner"], strict=True))


def test_read_trace_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="no trace file"):
        P.read_trace(tmp_path / "nope.json")
    other = tmp_path / "x.json"
    other.write_text("[1, 2]")
    with pytest.raises(ValueError, match="traceEvents"):
        P.read_trace(other)


def test_trace_ranges_skips_gpu_side_annotations():
    trace = {"traceEvents": [
        {"ph": "X", "name": "generation", "cat": "user_annotation", "dur": 2000.0},
        {"ph": "X", "name": "generation", "cat": "gpu_user_annotation", "dur": 1500.0},
        {"ph": "B", "name": "generation", "cat": "user_annotation"},
    ]}
    assert P.trace_ranges(trace, ["generation"]) == {"generation": [0.002]}


def test_quiet_native_stderr_silences_fd2_and_restores_it(tmp_path, capfd):
    with P.quiet_native_stderr():
        os.write(2, b"hidden\n")
    os.write(2, b"visible\n")
    err = capfd.readouterr().err
    assert "hidden" not in err and "visible" in err


@pytest.mark.parametrize(("f", "s", "expected"), [(0.5, 2, 4 / 3), (0.4, 10, 1 / 0.64), (0.0, 100, 1.0),
                                                  (1.0, 4, 4.0), (0.75, math.inf, 4.0),
                                                  (1.0, math.inf, math.inf)])
def test_amdahl_hand_values(f, s, expected):
    assert P.amdahl_speedup(f, s) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 1), st.floats(1, 1e6))
def test_amdahl_speedup_is_between_one_and_the_ceiling_and_below_the_factor(f, s):
    sp = P.amdahl_speedup(f, s)
    assert 1.0 - 1e-12 <= sp <= s * (1 + 1e-12)
    assert sp <= P.amdahl_speedup(f, math.inf) * (1 + 1e-12)


@pytest.mark.parametrize(("f", "s"), [(-0.1, 2), (1.1, 2), (0.5, 0), (0.5, -1), (0.5, math.nan), (True, 2)])
def test_amdahl_rejects_bad_arguments(f, s):
    with pytest.raises(ValueError):
        P.amdahl_speedup(f, s)


def test_nsys_step_range_is_start_inclusive_stop_exclusive():
    assert list(P.nsys_step_range("3:5")) == [3, 4]
    assert list(P.nsys_step_range("1:2")) == [1]


@pytest.mark.parametrize(("value", "match"), [("0:10", ">= 1"), ("5:5", "non-empty"), ("6:5", "non-empty"),
                                              ("3-5", "start:stop"), ("a:b", "integers"),
                                              ("1:2:3", "start:stop")])
def test_nsys_step_range_rejects_bad_values(value, match):
    with pytest.raises(ValueError, match=match):
        P.nsys_step_range(value)


def test_nsys_step_range_needs_a_string():
    with pytest.raises(TypeError):
        P.nsys_step_range(35)


def test_profile_grpo_step_script_runs_its_steps_on_this_machine():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = root / "examples" / "performance" / "scripts" / "profile_grpo_step.py"
    proc = subprocess.run([sys.executable, str(script), "--steps", "2", "--profile-steps", "1:2"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert len(lines) == 2 and all("policy_training" in ln for ln in lines)


def test_compile_unavailable_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(P.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    reason = P.compile_unavailable("cpu")
    assert reason.startswith("missing") and "C++ compiler" in reason and "g++" in reason
    monkeypatch.setattr(P.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(P.sysconfig, "get_paths", lambda: {"include": "/nonexistent"})
    assert P.compile_unavailable("cpu") == "missing Python's headers (/nonexistent/Python.h)"
    with pytest.raises(ValueError, match="device"):
        P.compile_unavailable("meta")
