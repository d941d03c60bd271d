"""The offline one-GPU run (examples/gpu-runs/run.sh, run.py, bundle.py), checked on CPU at small scale.

CI has no GPU: it runs the same script, with the same install path (a wheels bundle built for the
running interpreter, installed with ``pip --no-index`` into a temporary folder), on one of the four
notebooks plus the smoke check. The other three notebooks run at small scale in the notebook tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from notebook_runner import _nvml_state, gpu_provenance, myst_notebook

ROOT = Path(__file__).resolve().parent.parent
RUN_SH = ROOT / "examples" / "gpu-runs" / "run.sh"
RUN_PY = ROOT / "examples" / "gpu-runs" / "run.py"
CPU_ENV = {"RLREF_SCALE": "small", "CUDA_VISIBLE_DEVICES": ""}


def _run(cmd: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **CPU_ENV, **env})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The wheels bundle for this interpreter, as `nox -s gpu-bundle -- --current DIR` makes it."""
    dest = tmp_path_factory.mktemp("wheels")
    proc = _run([sys.executable, "examples/gpu-runs/bundle.py", "--current", str(dest)])
    if proc.returncode != 0 and "pip" in proc.stderr and ("connect" in proc.stderr.lower() or
                                                          "No matching distribution" in proc.stderr):
        pytest.skip(f"pip download is unavailable here (no network?): {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def test_bundle_is_under_64_mib_and_holds_no_torch(bundle):
    wheels = sorted(p.name for p in bundle.glob("*.whl"))
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"nbclient", "ipykernel", "myst_nb", "myst_parser", "docutils", "pyyaml"} <= names, names
    assert not names & {"torch", "numpy", "scipy", "matplotlib", "sphinx", "jupyter_cache"}, names
    assert sum(p.stat().st_size for p in bundle.glob("*.whl")) <= 64 * 2**20
    assert "total" in (bundle / "MANIFEST.txt").read_text()


def test_run_sh_installs_the_bundle_offline_and_stores_a_notebook_with_provenance(bundle, tmp_path):
    out = tmp_path / "out"
    nb = "examples/performance/mixed-precision.md"
    proc = _run([str(RUN_SH), "--out", str(out), nb], timeout=240, RLREF_GPU_WHEELS=str(bundle),
                PYTHON=sys.executable, PIP_NO_INDEX="1")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"installed {len(list(bundle.glob('*.whl')))} wheels" in log and "torch untouched" in log
    assert "Total:" in log and "2 passed, 0 failed" in log
    assert "monitoring" in log and "2-GPU distributed-training run" in log  # what stays out, said
    stored = out / "performance" / "mixed-precision.ipynb"
    meta = json.loads(stored.with_suffix(".json").read_text())
    assert meta["source"] == nb and meta["scale"] == "small" and meta["device"].startswith("CPU")
    for key in ("source_sha256", "driver", "cuda", "torch", "date", "seconds", "git_commit", "python"):
        assert meta[key] not in (None, ""), key
    cells = json.loads(stored.read_text())["cells"]
    assert any(c.get("outputs") for c in cells if c["cell_type"] == "code")
    smoke = json.loads((out / "smoke.json").read_text())
    assert smoke["range_totals_generation"]["count"] == 3 and smoke["range_totals_generation"]["cpu_s"] > 0
    assert smoke["torch_compile"]


def test_run_keeps_going_after_a_failure_and_reports_every_one(tmp_path):
    ok = tmp_path / "ok.md"
    ok.write_text(myst_notebook("Fine", 'print("fine")'), encoding="utf-8")
    bad = tmp_path / "bad.md"
    bad.write_text(myst_notebook("Broken", "raise RuntimeError('broken on purpose')"), encoding="utf-8")
    slow = tmp_path / "slow.md"
    pid_file = tmp_path / "kernel.pid"
    cell = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)"
    slow.write_text(myst_notebook("Slow", cell), encoding="utf-8")
    out = tmp_path / "out"
    proc = _run([sys.executable, str(RUN_PY), "--out", str(out), "--no-smoke", "--budget", "25",
                 str(bad), str(slow), str(ok)], timeout=200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "broken on purpose" in log and "1 passed, 2 failed" in log
    assert f"FAILED {bad}" in log and f"FAILED {slow}" in log
    assert (out / tmp_path.name / "ok.ipynb").exists() and not (out / tmp_path.name / "bad.ipynb").exists()
    # the over-budget notebook's kernel is gone too (on a GPU it would hold memory the next one needs)
    pid = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the kernel of {slow.name} (pid {pid}) still runs")


def test_run_refuses_to_fill_the_real_store_from_a_cpu_run():
    proc = _run([sys.executable, str(RUN_PY), "--no-smoke"], timeout=120)
    assert proc.returncode == 2 and "full-scale CUDA runs only" in proc.stderr


def test_provenance_of_a_cpu_run_and_the_refusal_without_cuda(tmp_path):
    nb = tmp_path / "x.md"
    nb.write_text("x", encoding="utf-8")
    meta = gpu_provenance(nb, 1.234, root=tmp_path, scale="small", require_cuda=False)
    assert meta["source"] == "x.md" and meta["seconds"] == 1.2 and meta["cuda"] == "none"
    with pytest.raises(RuntimeError, match="CUDA device"):
        gpu_provenance(nb, 1.0, root=tmp_path)
    with pytest.raises(ValueError, match="scale"):
        gpu_provenance(nb, 1.0, root=tmp_path, scale="medium", require_cuda=False)


def test_nvml_state_names_clock_power_mig_ecc_and_count(monkeypatch):
    """G9: the fields come from NVML; one NVML cannot report (MIG here) is None, not an error."""

    class NVMLError(Exception):
        pass

    def not_supported(handle):
        raise NVMLError("Not Supported")

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, NVML_CLOCK_SM=1, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: ("by-uuid", uuid), nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlSystemGetDriverVersion=lambda: b"580.82.07", nvmlDeviceGetCount=lambda: 8,
        nvmlDeviceGetClockInfo=lambda h, kind: 1755, nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000, nvmlDeviceGetMigMode=not_supported,
        nvmlDeviceGetEccMode=lambda h: (1, 1),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="abc"))
    assert _nvml_state() == {
        "driver": "580.82.07", "gpu_count": 8, "sm_clock_mhz": 1755, "sm_clock_max_mhz": 1980,
        "power_limit_w": 700.0, "mig_mode": None, "ecc_mode": "enabled",
    }
