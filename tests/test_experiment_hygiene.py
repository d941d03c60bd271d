"""The training and research experiments measure learning on tasks that can show it.

- No notebook (or the rlref module it trains through) makes a task whose best constant response
  scores above a uniformly random one (``greater``: "9" is always right), unless the line says it
  is a sanity check (``# sanity task``), not evidence of learning.
- A notebook that evaluates on held-out prompts takes them from the task's held-out split
  (``held_out_problems()`` or ``split="held_out"``), which no training loop ever draws
  (tests/lab/test_tasks.py and tests/lab/test_train.py check the loops and the split).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlref.lab import make_task

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples" / "training").glob("*.md")) + sorted(
    (ROOT / "examples" / "research").glob("*.md")
)
TRAINING_MODULES = [
    ROOT / "examples" / "rlref" / f"{name}.py"
    for name in ("curriculum", "multi_objective", "stability", "custom_losses", "experiments", "variants",
                 "hpo", "dynamics")
]
MAKE_TASK = re.compile(r"make_task\(\s*[\"'](\w+)[\"']([^)\n]*)")
SANITY = "# sanity task"


def code_of(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return text
    return "\n".join(re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", text, re.M | re.S))


def constant_optimum_calls(code: str) -> list[str]:
    """make_task(...) lines whose task has a constant response better than chance, unmarked."""
    found = []
    for line in code.splitlines():
        if SANITY in line:
            continue
        for name, rest in MAKE_TASK.findall(line):
            difficulty = re.match(r"\s*,\s*(\d+)", rest)
            task = make_task(name, int(difficulty.group(1))) if difficulty else make_task(name)
            if task.constant_policy_score("all") > task.uniform_policy_score("all") + 1e-12:
                found.append(line.strip())
    return found


@pytest.mark.parametrize("path", NOTEBOOKS + TRAINING_MODULES,
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_experiment_learns_a_task_with_a_constant_optimum(path):
    bad = constant_optimum_calls(code_of(path))
    assert not bad, f"{path.name} trains on a task a constant answer solves: {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_held_out_evaluations_use_the_held_out_split(path):
    code = code_of(path)
    if re.search(r"held[_ -]?out", code, re.I):
        assert re.search(r"held_out_problems\(|split\s*=\s*[\"']held_out[\"']", code), (
            f"{path.name} evaluates on 'held-out' prompts that do not come from the task's held-out split"
        )


def test_the_check_catches_greater_and_lets_learning_tasks_and_marked_sanity_checks_pass():
    assert constant_optimum_calls('task = make_task("greater")')
    assert constant_optimum_calls("t = make_task('greater', 2, reward_components=None)")
    assert not constant_optimum_calls('task = make_task("last")\nt = make_task("pick", 2)')
    assert not constant_optimum_calls('t = make_task("greater")  # sanity task: the loop runs')
