"""Stored full-scale GPU outputs (examples/gpu-runs): fresh, well-formed, and shown on the site."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_runner import Executed, myst_notebook, read_notebook, store_gpu_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from site_extras import gpu_runs, sha256_file, stale_gpu_runs  # noqa: E402

# A notebook shaped like profiling.md: a literalinclude of a script beside it and a download of a file
# the run writes under _generated/, both relative to the notebook's folder (review G2).
NOTEBOOK = myst_notebook("Tiny notebook", 'print("hello from the GPU run")').replace(
    "# Tiny notebook\n",
    "# Tiny notebook\n\nThe step, see {doc}`../theory/other`:\n\n```{literalinclude} scripts/step.py\n```\n",
) + (
    "\n```{code-cell} ipython3\nimport gzip\nfrom pathlib import Path\n\n"
    'Path("_generated").mkdir(exist_ok=True)\nPath("_generated/t.gz").write_bytes(gzip.compress(b"{}"))\n```\n'
    "\nThe trace: {download}`t.gz <_generated/t.gz>`; the script: {download}`scripts/step.py`.\n"
)
GPU_STATE = {"gpu_count": 1, "sm_clock_mhz": 1755, "sm_clock_max_mhz": 1980, "power_limit_w": 700.0,
             "mig_mode": "disabled", "ecc_mode": "enabled", "seconds": 1.0, "git_commit": "0" * 40}


def fake_run(root: Path, device: str = "NVIDIA H100 80GB HBM3") -> Path:
    """Store a GPU run of examples/theory/tiny.md as run.py would: its cells as the MyST reader reads
    them, with outputs made up here (the notebook is not executed)."""
    src = root / "examples" / "theory" / "tiny.md"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(NOTEBOOK, encoding="utf-8")
    (src.parent / "scripts").mkdir(exist_ok=True)
    (src.parent / "scripts" / "step.py").write_text("def step():\n    return 1\n", encoding="utf-8")
    (src.parent / "other.md").write_text("# Other\n", encoding="utf-8")
    nb = read_notebook(src)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello from the GPU run\n")]
    provenance = {
        "source": "examples/theory/tiny.md",
        "source_sha256": sha256_file(src),
        "device": device,
        "driver": "570.00",
        "cuda": "12.8",
        "torch": "2.13.0+cu128",
        "date": "2026-11-25 06:00 UTC",
        "scale": "full",
        **GPU_STATE,
    }
    return store_gpu_run(Executed(path=src, seconds=1.0, notebook=nb), provenance, root=root)


def test_real_store_has_no_stale_outputs():
    assert stale_gpu_runs(ROOT) == []


def test_every_real_stored_output_names_its_hardware():
    for run in gpu_runs(ROOT):
        assert run.provenance["device"] and run.provenance["driver"] and run.provenance["scale"] == "full"
        nb = nbformat.read(run.ipynb, as_version=4)
        assert any(cell.get("outputs") for cell in nb.cells), f"{run.ipynb} has no outputs"


def test_checker_accepts_fresh_and_flags_edited_notebook(tmp_path):
    stored = fake_run(tmp_path)
    assert stored == tmp_path / "examples" / "gpu-runs" / "theory" / "tiny.ipynb"
    assert stale_gpu_runs(tmp_path) == []
    src = tmp_path / "examples" / "theory" / "tiny.md"
    src.write_text(NOTEBOOK.replace("hello", "hi"), encoding="utf-8")
    (message,) = stale_gpu_runs(tmp_path)
    assert "examples/theory/tiny.md changed since the GPU run" in message
    src.unlink()
    (message,) = stale_gpu_runs(tmp_path)
    assert "no longer exists" in message


def test_checker_rejects_malformed_store(tmp_path):
    stored = fake_run(tmp_path)
    meta = stored.with_suffix(".json")
    data = json.loads(meta.read_text())
    del data["driver"]
    meta.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="lacks \\['driver'\\]"):
        stale_gpu_runs(tmp_path)
    meta.unlink()
    with pytest.raises(ValueError, match="without its provenance"):
        stale_gpu_runs(tmp_path)


def test_store_rejects_provenance_without_hash(tmp_path):
    with pytest.raises(ValueError, match="source_sha256"):
        store_gpu_run(Executed(path=tmp_path / "x.md", seconds=0.0, notebook=nbformat.v4.new_notebook()), {})


def test_site_shows_fresh_gpu_output_with_hardware_and_hides_stale(tmp_path):
    fake_run(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "examples").symlink_to("../examples")
    (docs / "index.md").write_text(
        "# Index\n\n```{toctree}\nexamples/theory/tiny\nexamples/theory/other\n```\n", encoding="utf-8"
    )

    def build(out: str, *flags: str) -> Path:
        cmd = [sys.executable, "-m", "sphinx", "-q", *flags, "-c", str(ROOT), "-D", f"site_root={tmp_path}"]
        cmd += ["-b", "html", str(docs), str(tmp_path / out)]
        env = {**os.environ, "NB_EXECUTION_CACHE_PATH": str(tmp_path / "cache")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return tmp_path / out

    html = build("fresh", "-W", "-n", "--keep-going")  # any warning fails the build (the site's flags)
    cpu_page = (html / "examples" / "theory" / "tiny.html").read_text(encoding="utf-8")
    assert "NVIDIA H100 80GB HBM3" in cpu_page and "gpu-runs/theory/tiny.html" in cpu_page
    gpu_page = (html / "examples" / "gpu-runs" / "theory" / "tiny.html").read_text(encoding="utf-8")
    assert "NVIDIA H100 80GB HBM3" in gpu_page and "hello from the GPU run" in gpu_page
    assert "power limit 700.0 W" in gpu_page and "ECC enabled" in gpu_page  # review G9
    # review G2: the script is included from the CPU notebook's folder, the run's own file is named
    text = re.sub(r"<[^>]+>", "", gpu_page)
    assert "def step():" in text and "written by this run, not stored with it" in text
    assert "theory/other.html" in gpu_page

    (tmp_path / "examples" / "theory" / "tiny.md").write_text(NOTEBOOK + "\nEdited.\n", encoding="utf-8")
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    html = build("stale")
    assert "NVIDIA H100" not in (html / "examples" / "theory" / "tiny.html").read_text(encoding="utf-8")
