"""Execute one MyST text notebook outside Sphinx, the way the site build does.

Used by the notebook tests, and by contributors while writing a notebook:

    python tests/notebook_runner.py examples/theory/grpo-theory.md

On failure it names the notebook, the cell (index and first line) and the exception.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from myst_parser.config.main import MdParserConfig
from myst_nb.core.read import read_myst_markdown_notebook
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


def read_notebook(path: Path) -> nbformat.NotebookNode:
    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"), MdParserConfig(), path=str(path))


def execute(path: Path | str, timeout: int = 180) -> Executed:
    """Run every cell of ``path`` in a fresh kernel (cwd = the notebook's folder)."""
    path = Path(path).resolve()
    nb = read_notebook(path)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        index = next(
            (i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))),
            None,
        )
        first_line = nb.cells[index].source.splitlines()[0] if index is not None and nb.cells[index].source else ""
        raise NotebookFailed(
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: cell {index} ({first_line!r}) raised "
            f"{exc.ename}: {exc.evalue}"
        ) from None
    return Executed(path=path, seconds=time.perf_counter() - start, notebook=nb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=180)
    parser.add_argument("--quiet", action="store_true", help="print only the timing line")
    args = parser.parse_args()
    for path in args.notebooks:
        try:
            result = execute(path, timeout=args.timeout)
        except NotebookFailed as exc:
            print(f"FAILED {exc}", file=sys.stderr)
            return 1
        if not args.quiet:
            print("".join(result.text_outputs()))
        print(f"OK {path} in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
