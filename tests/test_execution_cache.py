"""The execution cache knows a notebook's code, and a build that warned is never reported green again.

- A notebook's inputs are the rlref modules it imports (transitively), the scripts it runs and the
  lock; their hash is part of its cache key, so changing one re-executes exactly the notebooks that
  use it (checked on a copy of the site with the test session's cache).
- Files a notebook writes for download come back with its cached outputs.
- A repeated build after a warning-producing change still fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from notebook_runner import cache_path, executable_documents
from test_site_build import build_site

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs" / "_ext"))
from site_extras import inputs_hash, notebook_inputs, rlref_closure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _package(tmp_path: Path) -> Path:
    """A small rlref-like package: __init__, a (imports .b), b, c (imported by nobody)."""
    pkg = tmp_path / "examples" / "rlref"
    (pkg / "lab").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""pkg"""\n')
    (pkg / "a.py").write_text("from .b import helper\n\n\ndef f():\n    return helper()\n")
    (pkg / "b.py").write_text("def helper():\n    return 1\n")
    (pkg / "c.py").write_text("def unused():\n    return 2\n")
    (pkg / "lab" / "__init__.py").write_text("from rlref.lab.policy import Model\n")
    (pkg / "lab" / "policy.py").write_text("from rlref import a\n\n\nclass Model:\n    pass\n")
    return pkg


def _notebook(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "examples" / "theory" / "nb.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    front = "---\nkernelspec:\n  name: python3\n---\n"
    path.write_text(f"{front}# NB\n\n```{{code-cell}} ipython3\n{code}\n```\n")
    return path


def test_inputs_are_the_transitive_rlref_imports_and_the_lock(tmp_path):
    pkg = _package(tmp_path)
    lock = tmp_path / "constraints.txt"
    lock.write_text("torch==2.13.0\n")
    nb = _notebook(tmp_path, "from rlref.a import f\nprint(f())")
    names = {p.relative_to(tmp_path).as_posix() for p in notebook_inputs(nb, pkg, lock)}
    expected = {"examples/rlref/__init__.py", "examples/rlref/a.py", "examples/rlref/b.py", "constraints.txt"}
    assert names == expected
    # a package import pulls its __init__ and what that imports, through relative and absolute imports
    closure = {p.name for p in rlref_closure("from rlref.lab import Model", pkg)}
    assert closure == {"__init__.py", "policy.py", "a.py", "b.py"}
    # `from rlref import a, c` imports both modules
    both = {p.name for p in rlref_closure("from rlref import a, c", pkg)}
    assert both == {"__init__.py", "a.py", "b.py", "c.py"}


def test_inputs_hash_changes_with_a_used_module_only(tmp_path):
    pkg = _package(tmp_path)
    lock = tmp_path / "constraints.txt"
    lock.write_text("torch==2.13.0\n")
    nb = _notebook(tmp_path, "from rlref.a import f")
    before = inputs_hash(nb, pkg, lock)
    (pkg / "c.py").write_text("def unused():\n    return 3\n")
    assert inputs_hash(nb, pkg, lock) == before, "a module the notebook does not import changed its key"
    (pkg / "b.py").write_text("def helper():\n    return 2\n")
    changed = inputs_hash(nb, pkg, lock)
    assert changed != before, "a module the notebook imports (through rlref.a) did not change its key"
    lock.write_text("torch==2.14.0\n")
    assert inputs_hash(nb, pkg, lock) != changed, "the lock did not change the key"


def test_scripts_a_notebook_runs_are_inputs():
    profiling = ROOT / "examples" / "performance" / "profiling.md"
    names = {p.name for p in notebook_inputs(profiling)}
    assert "profile_grpo_step.py" in names and "profiling.py" in names


def _copy_site(dest: Path) -> None:
    """The files a build reads, without generated downloads (they must come back from the cache)."""
    for name in ("conf.py", "constraints.txt"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("_generated", "__pycache__", "_tags", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "examples", dest / "examples", ignore=ignore)
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=ignore, symlinks=True)


def _used_by_exactly_one() -> tuple[Path, Path]:
    """An rlref module that exactly one executable document imports, and that document."""
    users: dict[Path, list[Path]] = {}
    for doc in executable_documents():
        for dep in notebook_inputs(doc):
            users.setdefault(dep, []).append(doc)
    rlref = ROOT / "examples" / "rlref"
    single = sorted((m, docs[0]) for m, docs in users.items() if len(docs) == 1 and rlref in m.parents)
    assert single, "every rlref module is used by several notebooks: the test needs one used by only one"
    return single[0]


def _touch_first_function(path: Path) -> str:
    """Add a statement to the body of the file's first top-level function; return its name."""
    import ast

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    function = next(n for n in ast.parse("".join(lines)).body if isinstance(n, ast.FunctionDef))
    first = function.body[0]
    is_docstring = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
    at = first.end_lineno if is_docstring else first.lineno - 1
    indent = " " * first.col_offset
    lines.insert(at, f"{indent}_touched = True  # changed by the stale-cache test\n")
    path.write_text("".join(lines), encoding="utf-8")
    return function.name


@pytest.mark.build
def test_changing_an_rlref_function_reexecutes_only_its_notebook(tmp_path):
    site = build_site()  # fills the shared execution cache with every notebook
    assert site.returncode == 0, site.log[-3000:]
    module, user = _used_by_exactly_one()
    _copy_site(tmp_path)
    cache = tmp_path / "cache"
    shutil.copytree(cache_path(), cache)
    copied = tmp_path / module.relative_to(ROOT)
    _touch_first_function(copied)

    cmd = [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-j", "auto", "-c", str(tmp_path)]
    cmd += ["-b", "html", str(tmp_path / "docs"), str(tmp_path / "html")]
    env = {**os.environ, "NB_EXECUTION_CACHE_PATH": str(cache)}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    executed = sorted(set(re.findall(r"(\S+\.md): Executing notebook", log)))
    expected = user.relative_to(ROOT).as_posix()
    assert len(executed) == 1 and executed[0].endswith(expected.split("/", 1)[1]), (
        f"changed {module.relative_to(ROOT)}, used only by {expected}; re-executed: {executed}"
    )
    # the profiling notebook's trace came back from the cache with its outputs (it was not copied)
    trace = tmp_path / "examples" / "performance" / "_generated" / "profiling" / "grpo_step_trace.json.gz"
    assert trace.is_file() and trace.stat().st_size > 0


def test_a_repeated_build_after_a_warning_still_fails(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "index.md").write_text("# Index\n\nSee {doc}`missing-page`.\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-c", str(ROOT)]
    cmd += ["-b", "html", str(src), str(tmp_path / "html")]
    env = {**os.environ, "NB_EXECUTION_CACHE_PATH": str(tmp_path / "cache")}

    def build() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    first, second = build(), build()
    assert first.returncode != 0 and "missing-page" in first.stderr, first.stderr
    assert second.returncode != 0 and "missing-page" in second.stderr, (
        "the second build reported success over a page with a broken reference:\n" + second.stderr
    )
    (src / "index.md").write_text("# Index\n\nNo links.\n", encoding="utf-8")
    assert build().returncode == 0
    assert build().returncode == 0  # and green stays green without re-reading
