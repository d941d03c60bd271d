"""No measured number is typed into prose: every one is glued from the notebook that computed it.

``prose_numbers`` compares each page's prose with the executed outputs of the notebooks it reports
(from the site build's execution cache); these tests run it over the whole site and show that it
catches a planted number, and that every glue reference names a value its notebook glued.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from notebook_runner import cached_notebook
from prose_numbers import (
    check,
    executed_texts,
    glue_problems,
    glued_values,
    notebooks_of,
    pages,
    prose,
    typed_measured_numbers,
)
from test_site_build import build_site

ROOT = Path(__file__).resolve().parent.parent


@functools.cache  # a page refers to its notebook's values hundreds of times: look each notebook up once
def _executed(nb: Path):
    executed = cached_notebook(nb)
    if executed is None:
        pytest.fail(f"{nb.relative_to(ROOT)} is not in the execution cache after the site build")
    return executed


@pytest.mark.build
def test_no_page_types_a_measured_number():
    assert build_site().returncode == 0
    findings = check(pages(), lambda nb: executed_texts(_executed(nb)))
    assert not findings, "\n".join(map(str, findings))


@pytest.mark.build
def test_every_glue_reference_names_a_glued_value():
    assert build_site().returncode == 0
    problems = [m for page in pages() for m in glue_problems(page, lambda nb: glued_values(_executed(nb)))]
    assert not problems, "\n".join(problems)


OUTPUTS = ["entropy over the last five steps: 0.0551\n", "zero-variance groups: 98.5%\n", "lr=0.03"]
CODE = "lr = 3e-2\nsteps = 40\n"


@pytest.mark.parametrize(
    "sentence",
    [
        "The entropy falls to 0.055 nats.",  # rounded from the output
        "The entropy falls to 0.0551 nats.",  # as printed
        "Almost all groups (98.5%) have zero variance.",  # a percentage
        "- entropy 0.055, a table cell or a list item",
    ],
)
def test_a_planted_measured_number_is_caught(tmp_path, sentence):
    page = tmp_path / "page.md"
    page.write_text(f"# Page\n\nIntro.\n\n{sentence}\n", encoding="utf-8")
    findings = typed_measured_numbers(page, OUTPUTS, CODE)
    assert [f.line for f in findings] == [5], findings


@pytest.mark.parametrize(
    "sentence",
    [
        "The entropy falls to {glue:text}`/examples/t/s.md::ent:.3f` nats.",  # glued
        "With `lr=0.03` and `eps=0.2`.",  # inline code
        "The learning rate 0.03 is a hyperparameter.",  # a literal of the code (3e-2)
        "The bound $0.055 \\le x$ is math.",  # math
        "One half, 0.5, is too common to attribute.",  # fewer than two significant digits
        "torch 2.13.0 and grpo.py:1803.",  # a version and a line number
    ],
)
def test_what_is_not_a_typed_measured_number(tmp_path, sentence):
    page = tmp_path / "page.md"
    page.write_text(f"# Page\n\n{sentence}\n", encoding="utf-8")
    assert typed_measured_numbers(page, OUTPUTS + ["0.5 2.13 1803"], CODE) == []


@pytest.mark.build
def test_a_number_planted_in_a_real_page_is_caught():
    """Plant one output of a real notebook into its docs page's prose: the checker names that line."""
    assert build_site().returncode == 0
    page = ROOT / "docs" / "training" / "training-stability.md"
    outputs, code = [], ""
    for nb in notebooks_of(page):
        outputs += executed_texts(_executed(nb))
        code += "".join(c.source for c in _executed(nb).cells if c.cell_type == "code")
    assert typed_measured_numbers(page, outputs, code) == []
    import re

    literals = {float(x) for x in re.findall(r"\d+\.\d+|\d+", code)}  # 0.100 is the code's 0.1
    planted = next(
        m.group(0) for text in outputs for m in re.finditer(r"\b\d\.\d{3}\b", text)
        if float(m.group(0)) not in literals and len(m.group(0).replace(".", "").strip("0")) >= 2
    )
    text = page.read_text(encoding="utf-8") + f"\nThe run ends at {planted} on this machine.\n"
    findings = typed_measured_numbers(page, outputs, code, text=text)
    assert len(findings) == 1 and findings[0].text == planted
    assert findings[0].line == text.count("\n")


def test_prose_blanks_code_math_roles_and_front_matter():
    text = "---\ndescription: 0.123\n---\n# T\n\n```python\nx = 0.456\n```\n\n"
    text += "$0.789$ and `0.321` and {glue:text}`k:.3f` 0.654\n"
    kept = prose(text)
    assert "0.654" in kept
    for hidden in ("0.123", "0.456", "0.789", "0.321", "glue"):
        assert hidden not in kept
    assert kept.count("\n") == text.count("\n")  # line numbers survive


def test_glue_problems_name_missing_keys_and_bad_formats(tmp_path):
    docs = tmp_path / "page.md"
    docs.write_text(
        "A {glue:text}`ok:.2f`, B {glue:text}`missing:.2f`, "
        "C {glue:text}`word:.2f`, D {glue:text}`word:s`.\n",
        encoding="utf-8",
    )
    problems = glue_problems(docs, lambda nb: {"ok": "0.25", "word": "'faster'"})
    assert len(problems) == 2
    assert "'missing'" in problems[0] and "'word'" in problems[1]
