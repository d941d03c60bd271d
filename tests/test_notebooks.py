"""Notebooks: each runs on CPU within its budget, a failing cell fails the build, outputs are deterministic.

The budget test reuses the site build's execution data (jupyter-cache records each notebook's run
time), so a notebook executes once per test session; a notebook the build did not record is
executed here with the budget as its timeout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from notebook_runner import cache_record, execute, myst_notebook, notebooks
from test_site_build import build_site

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = float(os.environ.get("NOTEBOOK_BUDGET_S", "90"))  # per notebook on a 2-core CI machine
# The one notebook over it, named with its own budget until it is made cheaper: curriculum-learning
# trains 4 arms x 10 seeds of 40 steps x 256 responses, one of them (dynamic sampling) seed by seed,
# and is compute-bound (not overhead: the batched lab is linear in seeds). Recorded in the site
# build on the 2-core machine: 69 s (2026-12-05), 97 s (2026-12-06, a slower day: Lighthouse's CPU
# benchmark index 1885 against 2160). Halving its prompts per step stops the target-only arm from
# learning beyond chance, so the cut needs a redesigned experiment (issue 11's closing note).
OVER_BUDGET_S = {"curriculum-learning.md": 150.0}
CACHE = Path(os.environ.get("NB_EXECUTION_CACHE_PATH", ROOT / "_build" / ".jupyter_cache"))
TIMING = re.compile(r"Notebook executed in [0-9.]+ s|\(timing\)[^\n]*")

NOTEBOOKS = notebooks(ROOT)


def recorded_seconds(path: Path) -> float | None:
    """The execution time jupyter-cache recorded for this notebook's current code and inputs, if any."""
    record = cache_record(path, CACHE)
    return None if record is None else record.data.get("execution_seconds")


@pytest.mark.parametrize(
    "path", NOTEBOOKS, ids=[p.relative_to(ROOT / "examples").as_posix() for p in NOTEBOOKS]
)
def test_notebook_runs_on_cpu_within_budget(path):
    budget = max(BUDGET_S, OVER_BUDGET_S.get(path.name, 0.0))
    build_site()  # executes (or reuses from the cache) every notebook once for the whole session
    seconds = recorded_seconds(path)
    if seconds is None:  # the build did not record it (e.g. it failed there): run it here for the message
        seconds = execute(path, timeout=int(budget)).seconds
    assert seconds <= budget, f"{path.name} took {seconds:.1f} s on CPU, budget {budget:.0f} s"


BROKEN = myst_notebook("Broken notebook", "x = 1", 'raise ValueError("deliberately broken cell")')

DETERMINISTIC = myst_notebook(
    "Determinism fixture",
    """\
from rlref.notebook import setup

run = setup(seed=0)
""",
    """\
import torch

model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
x = torch.randn(64, 8, generator=run.generator(1))
y = torch.randint(0, 4, (64,), generator=run.generator(2))
for step in range(30):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"loss after 30 steps: {loss.item():.6f}")
print(torch.multinomial(torch.softmax(model(x[:2]), -1), 5, replacement=True, generator=run.generator(3)))
""",
    """\
run.report()
""",
)


def test_failing_cell_fails_the_build_naming_notebook_cell_line_and_exception(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "index.md").write_text("# Index\n\n```{toctree}\nbroken\n```\n", encoding="utf-8")
    (src / "broken.md").write_text(BROKEN, encoding="utf-8")
    line = BROKEN.splitlines().index('raise ValueError("deliberately broken cell")') + 1  # 1-based
    # -j 2: a parallel build, as the site's (-j auto)
    cmd = [sys.executable, "-m", "sphinx", "-j", "2", "-W", "-n", "--keep-going", "-q", "-c", str(ROOT)]
    cmd += ["-b", "html", str(src), str(tmp_path / "html")]
    env = {**os.environ, "NB_EXECUTION_CACHE_PATH": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # drop the traceback's colours
    assert proc.returncode != 0, log
    assert f"broken.md: code cell 2, line {line}" in log  # the notebook, the cell and its .md line
    assert 'raise ValueError("deliberately broken cell")' in log  # the cell's source in the traceback
    assert "ValueError: deliberately broken cell" in log  # the exception
    assert "parallel build error" not in log.lower()  # no Sphinx crash boilerplate
    reports = list((tmp_path / "html" / ".doctrees" / "notebook-failures").glob("*.txt"))
    assert len(reports) == 1 and "code cell 2" in reports[0].read_text()  # what `nox -s docs` prints last


def test_notebook_runner_names_the_failing_cell(tmp_path):
    path = tmp_path / "broken.md"
    path.write_text(BROKEN, encoding="utf-8")
    from notebook_runner import NotebookFailed

    line = BROKEN.splitlines().index('raise ValueError("deliberately broken cell")') + 1
    expected = rf"broken\.md: code cell 2, line {line}\n(.|\n)*ValueError: deliberately broken cell"
    with pytest.raises(NotebookFailed, match=expected):
        execute(path, timeout=60)


def test_notebook_prints_identical_text_when_run_twice(tmp_path):
    path = tmp_path / "determinism.md"
    path.write_text(DETERMINISTIC, encoding="utf-8")
    first, second = (execute(path, timeout=120) for _ in range(2))
    texts = [TIMING.sub("<timing>", "".join(run.text_outputs())) for run in (first, second)]
    assert "loss after 30 steps" in texts[0] and "<timing>" in texts[0]
    assert texts[0] == texts[1], textwrap.shorten(texts[0], 500) + " != " + textwrap.shorten(texts[1], 500)
