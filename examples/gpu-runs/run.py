"""The one-GPU run: execute the notebooks that hold GPU rows, store each with its provenance.

Started by ``examples/gpu-runs/run.sh`` (which installs the offline wheels first); see README.md.
Each notebook runs in a child process with its own time budget, so a failure, a hang or a CUDA
error in one does not stop the others; every failure is reported at the end (exit status 1).

Out of this run on purpose: monitoring's full-scale runs (about 15 GRPO runs of 120 steps; its NVML
and profiler path is covered by the smoke check here) and the distributed-training notebook (NCCL
needs two GPUs; on one GPU it falls back to gloo and would repeat the CPU numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "examples" / "gpu-runs"
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]

#: The notebooks that hold GPU rows, with their budget in seconds at full scale on one H100 or H200
#: (each child, kernel start included, is stopped at its budget). Sum with the smoke check: 435 s of 480.
NOTEBOOKS = {
    "examples/performance/benchmarking.md": 120,
    "examples/performance/mixed-precision.md": 90,
    "examples/performance/memory-optimization.md": 90,
    "examples/performance/profiling.md": 90,
}
SMOKE_BUDGET = 45
LEFT_OUT = (
    "Not in this run: monitoring's full-scale runs (about 15 GRPO runs x 120 steps; the smoke check covers "
    "its NVML and profiler path) and the 2-GPU distributed-training run (NCCL needs two GPUs)."
)


def smoke(out: Path) -> int:
    """NVML, torch.profiler with CUDA activity, the peak-memory reset and torch.compile's prerequisites.

    Prints what it finds and writes it to ``out/smoke.json``; fails (exit 1) when a check fails. On CPU
    the CUDA parts are skipped and say so.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rlref import profiling as P

    cuda = torch.cuda.is_available()
    found: dict = {"torch": torch.__version__, "cuda": cuda}
    failures = []
    if cuda:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            found["nvml_gpu_count"] = pynvml.nvmlDeviceGetCount()
            found["nvml_utilization_pct"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            found["nvml_memory_used_bytes"] = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        finally:
            pynvml.nvmlShutdown()
        found["torch_cuda_utilization_pct"] = torch.cuda.utilization()  # NVML behind torch's API
        free, total = torch.cuda.mem_get_info()
        found["mem_get_info_bytes"] = [free, total]
        if not 0 <= found["torch_cuda_utilization_pct"] <= 100 or not 0 < free <= total:
            failures.append(f"NVML readings out of range: {found}")
    else:
        found["nvml"] = "skipped: no CUDA device"

    dev = torch.device("cuda" if cuda else "cpu")
    n = 4096 if cuda else 256
    a = torch.randn(n, n, device=dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with P.quiet_native_stderr(), profile(activities=activities) as prof:
        for _ in range(3):
            with P.phase("generation"):
                (a @ a).sum().item()
    entries = [e for e in prof.key_averages() if e.key == "generation"]
    found["profiler_entries_named_generation"] = [
        {"device_type": str(e.device_type), "count": e.count, "cpu_time_total_us": e.cpu_time_total,
         "device_time_total_us": getattr(e, "device_time_total", 0.0)}
        for e in entries
    ]
    totals = P.range_totals(prof, ["generation"])["generation"]
    found["range_totals_generation"] = totals
    if not (totals["count"] == 3 and totals["cpu_s"] > 0 and (totals["device_s"] > 0 or not cuda)):
        failures.append(f"range_totals read the wrong profiler entry (review G3): {totals}")

    if cuda:
        big = torch.empty(2**28, dtype=torch.uint8, device=dev)  # 256 MiB, then freed
        del big
        before = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        after = torch.cuda.max_memory_allocated()
        found["max_memory_allocated_before_after_reset"] = [before, after]
        if not after < before:
            failures.append(f"reset_peak_memory_stats did not lower the peak: {before} -> {after}")
    reason = P.compile_unavailable("cuda" if cuda else "cpu")
    found["torch_compile"] = f"unavailable: {reason}" if reason else "prerequisites present"

    for key, value in found.items():
        print(f"  {key}: {value}")
    (out / "smoke.json").write_text(json.dumps(found, indent=2, default=str) + "\n", encoding="utf-8")
    for failure in failures:
        print(f"  FAILED: {failure}")
    return 1 if failures else 0


def one(path: Path, out: Path, scale: str, budget: int) -> int:
    """Execute one notebook (cwd = its folder), store it with its provenance under ``out``."""
    from notebook_runner import NotebookFailed, execute, gpu_provenance, store_gpu_run

    try:
        result = execute(path, timeout=budget)
    except (NotebookFailed, TimeoutError) as exc:  # nbclient's CellTimeoutError is a TimeoutError
        print(f"{path.name}: {type(exc).__name__}: {exc}")
        return 1
    provenance = gpu_provenance(result.path, result.seconds, scale=scale, require_cuda=scale == "full")
    stored = store_gpu_run(result, provenance, store=out)
    print(f"  stored {stored} ({result.seconds:.1f} s)")
    return 0


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="*", type=Path, help=f"default: {', '.join(NOTEBOOKS)}")
    parser.add_argument("--out", type=Path, default=STORE, help="where <section>/<slug>.ipynb + .json go")
    parser.add_argument("--scale", choices=("small", "full"), default=os.environ.get("RLREF_SCALE", "full"))
    parser.add_argument("--no-smoke", action="store_true", help="skip the NVML + profiler smoke check")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # the child: one notebook
    parser.add_argument("--budget", type=int, default=90,
                        help="seconds for a notebook not in the list above (default 90)")
    parser.add_argument("--smoke-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["RLREF_SCALE"] = args.scale
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        return one(args.one.resolve(), out, args.scale, args.budget)
    if args.smoke_only:
        return smoke(out)

    import torch

    cuda = torch.cuda.is_available()
    if out == STORE.resolve() and not (cuda and args.scale == "full"):
        print(f"refusing to write {STORE.relative_to(ROOT)}: the store holds full-scale CUDA runs only; "
              "pass --out DIR for a small or CPU run", file=sys.stderr)
        return 2
    paths = [p.resolve() for p in args.notebooks] or [ROOT / p for p in NOTEBOOKS]
    print(f"GPU run at scale {args.scale!r} on {torch.cuda.get_device_name(0) if cuda else 'CPU (no CUDA)'}, "
          f"torch {torch.__version__}; outputs to {out}")
    print(LEFT_OUT, flush=True)
    start = time.perf_counter()
    failures = []
    jobs = [(p, NOTEBOOKS.get(_name(p), args.budget)) for p in paths]
    jobs += [] if args.no_smoke else [(None, SMOKE_BUDGET)]
    for path, budget in jobs:
        name = _name(path) if path else "smoke check (NVML, profiler, compile)"
        print(f"-- {name} (budget {budget} s)", flush=True)
        cmd = [sys.executable, __file__, "--out", str(out), "--scale", args.scale, "--budget", str(budget)]
        cmd += ["--one", str(path)] if path else ["--smoke-only"]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, start_new_session=True)  # its own group: the kernel goes with it
        try:
            rc = child.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child and the kernel it started (GPU memory back)
            child.wait()
            rc = f"stopped at its budget of {budget} s"
        seconds = time.perf_counter() - t0
        if rc != 0:
            failures.append(f"{name}: {'exit status ' + str(rc) if isinstance(rc, int) else rc}")
        print(f"   {'OK' if rc == 0 else 'FAILED'} {name} in {seconds:.1f} s", flush=True)
    total = time.perf_counter() - start
    print(f"Total: {total:.1f} s for {len(jobs)} jobs ({len(jobs) - len(failures)} passed, "
          f"{len(failures)} failed); budget {sum(b for _, b in jobs)} s, 480 s for the whole run.")
    print(LEFT_OUT)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
