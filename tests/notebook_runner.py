"""Execute one MyST text notebook outside Sphinx, the way the site build does.

Used by the notebook tests, and by contributors while writing a notebook:

    python tests/notebook_runner.py examples/theory/grpo-theory.md

``--store-gpu`` (used by ``nox -s notebooks-gpu`` on a CUDA machine) also writes the executed
notebook to ``examples/gpu-runs/<section>/<slug>.ipynb`` with its provenance in ``<slug>.json``
(device, driver, CUDA, torch, date, sha256 of the notebook source).

On failure it names the notebook, the cell (index and first line) and the exception.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from myst_nb.core.read import read_myst_markdown_notebook
from myst_parser.config.main import MdParserConfig
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from site_extras import failure_report, inputs_hash  # noqa: E402  (as the site build computes them)


class NotebookFailed(RuntimeError):
    """A cell raised; the message names the notebook, the code cell, its .md line, then the traceback."""


@dataclass
class Executed:
    path: Path
    seconds: float
    notebook: nbformat.NotebookNode

    def text_outputs(self) -> list[str]:
        """Every text output (stream and text/plain), in cell order."""
        texts = []
        for cell in self.notebook.cells:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream":
                    texts.append(out["text"])
                elif "data" in out and "text/plain" in out["data"]:
                    texts.append(out["data"]["text/plain"])
        return texts


HEADER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def myst_notebook(title: str, *cells: str) -> str:
    """The text of a MyST notebook with this title and these code cells (for tests and fixtures)."""
    body = "".join(f"\n```{{code-cell}} ipython3\n{cell.strip()}\n```\n" for cell in cells)
    return f"{HEADER}\n# {title}\n{body}"


def read_notebook(path: Path) -> nbformat.NotebookNode:
    text = path.read_text(encoding="utf-8")
    return read_myst_markdown_notebook(text, MdParserConfig(), add_source_map=True, path=str(path))


def cache_path() -> Path:
    """The execution cache the site build uses (``$NB_EXECUTION_CACHE_PATH``, as conf.py reads it)."""
    return Path(os.environ.get("NB_EXECUTION_CACHE_PATH", ROOT / "_build" / ".jupyter_cache"))


def keyed_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook as the site build keys it in the cache: its code plus the hash of its inputs."""
    nb = read_notebook(path)
    nb.metadata.setdefault("kernelspec", {})["rlref_inputs"] = inputs_hash(Path(path))
    return nb


def cache_record(path: Path, cache: Path | None = None):
    """The jupyter-cache record of this notebook's current code and inputs, or None."""
    from jupyter_cache import get_cache  # not needed to execute (the offline GPU run has no jupyter-cache)

    cache = cache or cache_path()
    if not cache.exists():
        return None
    try:
        return get_cache(str(cache)).match_cache_notebook(keyed_notebook(path))
    except KeyError:
        return None


def cached_notebook(path: Path, cache: Path | None = None) -> nbformat.NotebookNode | None:
    """The executed notebook from the site build's cache, if its code and inputs are unchanged."""
    record = cache_record(path, cache)
    if record is None:
        return None
    from jupyter_cache import get_cache

    return get_cache(str(cache or cache_path())).get_cache_bundle(record.pk).nb


def execute(path: Path | str, timeout: int = 180) -> Executed:
    """Run every cell of ``path`` in a fresh kernel (cwd = the notebook's folder)."""
    path = Path(path).resolve()
    nb = read_notebook(path)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        raise NotebookFailed(failure_report(path, nb, str(exc)).strip()) from None
    return Executed(path=path, seconds=time.perf_counter() - start, notebook=nb)


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every example notebook: ``examples/<section>/<slug>.md`` (not the package, not stored runs)."""
    return sorted(
        p
        for p in (root / "examples").glob("*/*.md")
        if p.parent.name not in {"rlref", "gpu-runs"} and p.name != "README.md"
    )


def is_notebook(path: Path) -> bool:
    """Whether myst-nb executes this Markdown file: its front matter names a kernel."""
    front = re.match(r"\A---\s*\n(.*?)\n---\s*\n", path.read_text(encoding="utf-8"), re.S)
    return front is not None and re.search(r"^kernelspec:", front.group(1), re.M) is not None


def executable_documents(root: Path = ROOT) -> list[Path]:
    """Every document the build executes: the notebooks, and the pages in docs/ with code cells."""
    pages = sorted(
        p
        for p in (root / "docs").glob("**/*.md")
        if p.relative_to(root / "docs").parts[0] not in {"examples", "_build", "_tags"} and is_notebook(p)
    )
    return notebooks(root) + pages


ROBUSTNESS_SEED_OFFSET = 1000  # the second block of seeds: far from every seed a notebook uses by default
# Instruction-set caps that make this CPU compute as a lesser one does (oneDNN, MKL, ATen kernels).
_LESSER_ISA = {
    "AVX512": {
        "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"
    },
    "AVX2": {
        "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"
    },
}


def robustness_env(offset: int = ROBUSTNESS_SEED_OFFSET) -> tuple[dict[str, str], str]:
    """Environment for a robustness run, and a sentence saying what it changes.

    Another block of seeds (``RLREF_SEED_OFFSET``) and another CPU's numerics: the instruction set
    this machine does not use by default (AVX2 on an AVX-512 machine, plain SIMD on an AVX2 one).
    """
    import tempfile

    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    env = {"RLREF_SEED_OFFSET": str(offset), "RLREF_SCALE": "small"}
    # torch.compile's on-disk caches do not key on the instruction set: a graph compiled for this CPU's
    # default ISA would be reused under the lesser one (seen: wrong results). Give the run its own.
    env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="rlref-robustness-inductor-")
    isa = _LESSER_ISA.get(capability.upper())
    if isa is None:
        return env, f"seeds moved by {offset}; {capability} CPU: no lesser instruction set to force"
    env.update(isa)
    return env, f"seeds moved by {offset}; {capability} machine computing as {isa['ATEN_CPU_CAPABILITY']}"


def _execute_with_env(path: Path, timeout: int, env: dict[str, str]) -> tuple[Path, float | None, str]:
    os.environ.update(env)  # the kernel nbclient starts inherits this process's environment
    try:
        return path, execute(path, timeout=timeout).seconds, ""
    except NotebookFailed as exc:
        return path, None, str(exc)


def run_all(paths: list[Path], timeout: int, env: dict[str, str], jobs: int) -> list[str]:
    """Execute every document under ``env`` (``jobs`` at a time); return one message per failure."""
    from concurrent.futures import ProcessPoolExecutor

    failures = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_execute_with_env, path, timeout, env) for path in paths]
        for future in futures:
            path, seconds, error = future.result()
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            if error:
                failures.append(error)
                print(f"FAILED {error}", flush=True)
            else:
                print(f"OK {name} in {seconds:.1f} s", flush=True)
    return failures


def _nvml_state() -> dict:
    """GPU count, driver, SM clock (now and max), power limit, MIG and ECC mode of CUDA device 0, by NVML.

    What a result is compared under (review G9): a boost-clock peak assumes the max SM clock, a capped
    power limit or a MIG slice lowers it. Fields NVML cannot report on this GPU are None.
    """
    import torch

    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return {"nvml": "nvidia-ml-py is not installed"}
    pynvml.nvmlInit()
    try:
        def get(fn, *args):
            try:
                value = fn(*args)
            except pynvml.NVMLError:
                return None
            return value.decode() if isinstance(value, bytes) else value

        handle = None
        uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
        if uuid is not None:  # device 0 of torch, whatever CUDA_VISIBLE_DEVICES maps it to
            handle = get(pynvml.nvmlDeviceGetHandleByUUID, f"GPU-{uuid}")
        handle = handle or pynvml.nvmlDeviceGetHandleByIndex(0)
        mig, ecc = get(pynvml.nvmlDeviceGetMigMode, handle), get(pynvml.nvmlDeviceGetEccMode, handle)
        power_mw = get(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return {
            "driver": get(pynvml.nvmlSystemGetDriverVersion),
            "gpu_count": get(pynvml.nvmlDeviceGetCount),
            "sm_clock_mhz": get(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": get(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM),
            "power_limit_w": None if power_mw is None else power_mw / 1000,
            "mig_mode": None if mig is None else ("enabled" if mig[0] else "disabled"),
            "ecc_mode": None if ecc is None else ("enabled" if ecc[0] else "disabled"),
        }
    finally:
        pynvml.nvmlShutdown()


def _git_commit(root: Path) -> str:
    """HEAD of the checkout (``$RLREF_GIT_COMMIT`` where the copy has no .git), else "unknown"."""
    commit = os.environ.get("RLREF_GIT_COMMIT", "")
    if not commit:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root)
        commit = proc.stdout.strip() if proc.returncode == 0 else ""
    return commit or "unknown"


def gpu_provenance(
    path: Path, seconds: float, root: Path = ROOT, scale: str = "full", require_cuda: bool = True
) -> dict:
    """Where and when a notebook ran: device, driver, CUDA, torch, date, commit, source sha256, seconds.

    On CUDA also the GPU count, SM clock, power limit, MIG and ECC mode (NVML). ``require_cuda=False``
    describes a CPU run instead (the small-scale check of examples/gpu-runs/run.sh in CI).
    """
    import torch

    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    cuda = torch.cuda.is_available()
    if require_cuda and not cuda:
        raise RuntimeError("GPU outputs need a CUDA device; torch.cuda.is_available() is False")
    provenance = {
        "source": path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix(),
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": scale,
        "seconds": round(seconds, 1),
        "git_commit": _git_commit(root),
    }
    if cuda:
        provenance |= {"device": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
        provenance |= _nvml_state()
        if not provenance.get("driver"):
            provenance["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=True,
            ).stdout.splitlines()[0].strip()
    else:
        provenance |= {"device": f"CPU ({platform.machine()})", "driver": "none", "cuda": "none"}
    return provenance


def store_gpu_run(result: Executed, provenance: dict, root: Path = ROOT, store: Path | None = None) -> Path:
    """Write ``<store>/<section>/<slug>.ipynb`` and its ``.json`` provenance; return the .ipynb.

    ``store`` defaults to ``root/examples/gpu-runs``, the folder the site renders.
    """
    if not isinstance(provenance, dict) or "source_sha256" not in provenance:
        raise ValueError("provenance must be a dict with at least 'source_sha256' (see gpu_provenance)")
    section, slug = result.path.parent.name, result.path.stem
    out = (store or root / "examples" / "gpu-runs") / section / f"{slug}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(result.notebook, out)
    out.with_suffix(".json").write_text(
        json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=180)
    parser.add_argument("--quiet", action="store_true", help="print only the timing line")
    parser.add_argument(
        "--store-gpu", action="store_true", help="store outputs + provenance in examples/gpu-runs"
    )
    parser.add_argument("--all", action="store_true", help="run every notebook under examples/")
    parser.add_argument(
        "--robustness", action="store_true",
        help="run every executable document (or those named) under another block of seeds and another "
        "CPU instruction set, every assertion on; report every failure",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="documents at a time (--robustness)"
    )
    args = parser.parse_args()
    if args.robustness:
        env, what = robustness_env()
        paths = [p.resolve() for p in args.notebooks] or executable_documents()
        print(f"Robustness run of {len(paths)} documents: {what}.", flush=True)
        print("  " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
        start = time.perf_counter()
        failures = run_all(paths, args.timeout, env, args.jobs)
        seconds = time.perf_counter() - start
        print(f"Robustness run took {seconds:.0f} s.")
        print(f"{len(paths) - len(failures)} passed, {len(failures)} failed")
        return 1 if failures else 0
    failed = []  # every notebook runs; every failure is reported (a partial GPU store says what is missing)
    for path in (notebooks() if args.all else []) + list(args.notebooks):
        try:
            result = execute(path, timeout=args.timeout)
        except NotebookFailed as exc:
            print(f"FAILED {exc}", file=sys.stderr)
            failed.append(str(path))
            continue
        if not args.quiet:
            print("".join(result.text_outputs()))
        print(f"OK {path} in {result.seconds:.1f} s")
        if args.store_gpu:
            stored = store_gpu_run(result, gpu_provenance(result.path, result.seconds))
            print(f"stored {stored.relative_to(ROOT)} (+ .json provenance)")
    if failed:
        print(f"{len(failed)} failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
