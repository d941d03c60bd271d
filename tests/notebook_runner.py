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
import platform
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


class NotebookFailed(RuntimeError):
    """A cell of a notebook raised; the message names the notebook, the cell and the exception."""


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
    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"), MdParserConfig(), path=str(path))


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
        index = next(
            (
                i
                for i, c in enumerate(nb.cells)
                if c.cell_type == "code"
                and any(o.get("output_type") == "error" for o in c.get("outputs", []))
            ),
            None,
        )
        first_line = (
            nb.cells[index].source.splitlines()[0] if index is not None and nb.cells[index].source else ""
        )
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        raise NotebookFailed(
            f"{name}: cell {index} ({first_line!r}) raised "
            f"{exc.ename}: {exc.evalue}"
        ) from None
    return Executed(path=path, seconds=time.perf_counter() - start, notebook=nb)


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every example notebook: ``examples/<section>/<slug>.md`` (not the package, not stored runs)."""
    return sorted(
        p
        for p in (root / "examples").glob("*/*.md")
        if p.parent.name not in {"rlref", "gpu-runs"} and p.name != "README.md"
    )


def gpu_provenance(path: Path, seconds: float, root: Path = ROOT) -> dict:
    """Where and when a notebook ran: device, driver, CUDA, torch, date, and its source's sha256."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("GPU outputs need a CUDA device; torch.cuda.is_available() is False")
    driver = (
        subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.splitlines()[0]
        .strip()
    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root
    ).stdout.strip()
    return {
        "source": path.relative_to(root).as_posix(),
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "device": torch.cuda.get_device_name(0),
        "driver": driver,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": "full",
        "seconds": round(seconds, 1),
        "git_commit": commit,
    }


def store_gpu_run(result: Executed, provenance: dict, root: Path = ROOT) -> Path:
    """Write ``examples/gpu-runs/<section>/<slug>.ipynb`` and its ``.json`` provenance; return the .ipynb."""
    if not isinstance(provenance, dict) or "source_sha256" not in provenance:
        raise ValueError("provenance must be a dict with at least 'source_sha256' (see gpu_provenance)")
    section, slug = result.path.parent.name, result.path.stem
    out = root / "examples" / "gpu-runs" / section / f"{slug}.ipynb"
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
    args = parser.parse_args()
    for path in (notebooks() if args.all else []) + list(args.notebooks):
        try:
            result = execute(path, timeout=args.timeout)
        except NotebookFailed as exc:
            print(f"FAILED {exc}", file=sys.stderr)
            return 1
        if not args.quiet:
            print("".join(result.text_outputs()))
        print(f"OK {path} in {result.seconds:.1f} s")
        if args.store_gpu:
            stored = store_gpu_run(result, gpu_provenance(result.path, result.seconds))
            print(f"stored {stored.relative_to(ROOT)} (+ .json provenance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
