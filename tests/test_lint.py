"""ruff over the code and over every notebook's code cells; codespell over the prose."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = ["tests", "examples/rlref", "conf.py", "noxfile.py", "docs/_ext", "docs/_inventories"]
# In a notebook, imports sit in later cells (E402), a bare expression displays a value (B018),
# a trailing semicolon hides one (E703), and a cell may redefine a name on purpose (F811).
# Line length (E501) is not enforced in cells: table-printing f-strings run long, and the rendered
# page wraps them; the package and tests keep the 110-column limit.
NOTEBOOK_IGNORE = "E402,B018,E703,F811,E501"


def tool(name: str) -> str:
    """The tool installed next to this Python (nox's or the project's venv), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the 'lint' extra (pip install -e .[lint])")
    return found


def notebook_sources() -> list[Path]:
    """Every Markdown file with code cells: the notebooks in examples/ and pages in docs/."""
    paths = sorted((ROOT / "examples").glob("*/*.md")) + sorted((ROOT / "docs").glob("*/*.md"))
    return [p for p in paths if "{code-cell}" in p.read_text(encoding="utf-8")]


_CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.M | re.S)
_CELL_OPTIONS = re.compile(r"\A(?:---\n.*?\n---\n|(?::[\w-]+:[^\n]*\n)+)", re.S)


def code_cells(path: Path) -> list[str]:
    """The source of each code cell of a MyST notebook, without its options (no myst-nb needed)."""
    return [_CELL_OPTIONS.sub("", cell) for cell in _CODE_CELL.findall(path.read_text(encoding="utf-8"))]


def cells_as_python(path: Path) -> str:
    """Code cells joined into one module; IPython magics and shell lines become comments."""
    chunks = []
    for i, source in enumerate(code_cells(path)):
        lines = [
            f"# {line}" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
        ]
        chunks.append(f"# --- cell {i}\n" + "\n".join(lines) + "\n")
    return "\n\n".join(chunks)


def test_ruff_on_code():
    proc = subprocess.run(
        [tool("ruff"), "check", "--output-format", "concise", *CODE], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_on_notebook_code_cells(tmp_path):
    sources = notebook_sources()
    names = {}
    for path in sources:
        rel = path.relative_to(ROOT)
        out = tmp_path / ("__".join(rel.with_suffix("").parts).replace("-", "_") + ".py")
        out.write_text(cells_as_python(path), encoding="utf-8")
        names[out.name] = rel.as_posix()
    if not names:
        pytest.fail("found no notebooks with code cells under examples/ or docs/")
    cmd = [tool("ruff"), "check", "--output-format", "concise", "--config", str(ROOT / "pyproject.toml")]
    cmd += ["--extend-ignore", NOTEBOOK_IGNORE, str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    for name, rel in names.items():
        report = report.replace(name, rel + " (code cells)")
    assert proc.returncode == 0, report


def test_ruff_catches_a_bad_notebook_cell(tmp_path):
    path = tmp_path / "bad.md"
    path.write_text(
        "# Bad\n\n```{code-cell} ipython3\nimport os\nx = undefined_name\n```\n", encoding="utf-8"
    )
    out = tmp_path / "bad.py"
    out.write_text(cells_as_python(path), encoding="utf-8")
    cmd = [
        tool("ruff"),
        "check",
        "--output-format",
        "concise",
        "--config",
        str(ROOT / "pyproject.toml"),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and "F401" in proc.stdout and "F821" in proc.stdout


def test_codespell_on_prose():
    cmd = [tool("codespell"), "--toml", str(ROOT / "pyproject.toml"), "docs", "examples", "README.md"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_example_page_is_a_text_notebook():
    # without its jupytext/kernelspec front matter myst-nb reads the file as plain Markdown: its
    # cells never run and every glue role on it and on its docs page goes missing
    header = re.compile(r"---\njupytext:.*?\nkernelspec:.*?\n---\n", re.S)
    missing = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "examples").glob("*/*.md"))
               if p.parent.name != "gpu-runs" and not header.match(p.read_text(encoding="utf-8"))]
    assert not missing, f"example pages without the text-notebook front matter: {missing}"
