"""Every figure an executed page draws carries alt text that says what the figure shows (issue 14).

The alt text goes in the metadata of the code cell that draws the figure (contributing guide):

    ```{code-cell} ipython3
    ---
    mystnb:
      image:
        alt: Held-out accuracy against step for arms A and B, mean of ten seeds with 95% t-bands ...
    ---

Figure cells are found statically, from their code, so the check needs no execution and no build:
every figure on the site is drawn on a Matplotlib figure the cell creates (``plt.subplots``; the
``rlref.plotting`` helpers draw on an ``Axes`` the caller owns) and shown with ``plt.show()``. Where
a cached build is present, a second test checks that this detection agrees with the cells that
really have an image output.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from notebook_runner import ROOT, cached_notebook, executable_documents, myst_notebook, read_notebook

#: A call that creates or shows a Matplotlib figure (or displays one by hand).
FIGURE_CALL = re.compile(r"\bplt\.(?:show|subplots?|figure|imshow)\(|\bdisplay\(\s*(?:fig|plt\.gcf)")
MIN_ALT_CHARS = 40
#: What a file name or path looks like: no spaces, or an image suffix, or a build folder.
PATH_LIKE = re.compile(r"\A\S+\Z|\.(?:png|svg|jpe?g|gif|pdf)\b|_images/|_build/", re.IGNORECASE)
IMAGE_MIMES = ("image/png", "image/svg+xml", "image/jpeg")



def code_without_comments(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))


def draws_figure(source: str) -> bool:
    """Whether a code cell with this source draws a figure."""
    return FIGURE_CALL.search(code_without_comments(source)) is not None


def alt_text(cell) -> str | None:
    alt = cell.get("metadata", {}).get("mystnb", {}).get("image", {}).get("alt")
    return alt if isinstance(alt, str) else None


def alt_problem(alt: str | None) -> str | None:
    """Why this alt text does not say what a figure shows, or None if it may."""
    if alt is None or not alt.strip():
        return "no mystnb.image.alt"
    if PATH_LIKE.search(alt.strip()):
        return f"alt text is a file name or path: {alt!r}"
    if len(alt.strip()) < MIN_ALT_CHARS:
        return f"alt text shorter than {MIN_ALT_CHARS} characters: {alt!r}"
    return None


def figure_alt_problems(nb: nbformat.NotebookNode) -> list[str]:
    """One line per figure cell of ``nb`` whose alt text is missing, too short or a path."""
    lines = nb.metadata.get("source_map") or []
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not draws_figure(cell.source):
            continue
        problem = alt_problem(alt_text(cell))
        if problem:
            where = f"cell at line {lines[index]}" if index < len(lines) else f"cell {index}"
            first = cell.source.strip().splitlines()[0][:70]
            problems.append(f"{where} ({first!r}): {problem}")
    return problems


def image_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells of an executed notebook that have an image output."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and any(mime in out.get("data", {}) for out in cell.get("outputs", []) for mime in IMAGE_MIMES)]


def detection_mismatches(executed: nbformat.NotebookNode) -> list[str]:
    """Cells where the static detection and the executed outputs disagree."""
    shown = set(image_cells(executed))
    detected = {i for i, c in enumerate(executed.cells) if c.cell_type == "code" and draws_figure(c.source)}
    return ([f"cell {i} shows an image but is not detected: {executed.cells[i].source[:70]!r}"
             for i in sorted(shown - detected)]
            + [f"cell {i} is detected but shows no image: {executed.cells[i].source[:70]!r}"
               for i in sorted(detected - shown)])


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _documents():
    return [pytest.param(path, id=_rel(path)) for path in executable_documents()]


@pytest.mark.parametrize("path", _documents())
def test_every_figure_says_what_it_shows(path):
    problems = figure_alt_problems(read_notebook(path))
    header = f"{_rel(path)}: figure cells without alt text that says what they show:"
    assert not problems, "\n".join([header, *problems])


def test_every_notebook_is_checked():
    checked = {_rel(p) for p in executable_documents()}
    assert {"examples/theory/grpo-theory.md", "examples/research/custom-algorithms.md",
            "docs/theory/loss-functions.md"} <= checked


def _synthetic(tmp_path: Path, *cells: str) -> nbformat.NotebookNode:
    path = tmp_path / "synthetic.md"
    path.write_text(myst_notebook("Synthetic", *cells), encoding="utf-8")
    return read_notebook(path)


GOOD_ALT = ("Training reward against step for two arms, mean of ten seeds with 95% t-bands; "
            "arm B rises above arm A.")


def _with_alt(alt: str, code: str) -> str:
    return f"---\nmystnb:\n  image:\n    alt: {alt}\n---\n{code}"


def test_check_catches_a_figure_cell_without_alt_text(tmp_path):
    plot = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\nplt.show()"
    nb = _synthetic(
        tmp_path,
        "x = 1\nprint(x)",                      # no figure: needs no alt text
        plot,                                  # no alt text
        _with_alt("_images/ab12cd.png", plot),  # a path
        _with_alt("a plot", plot),             # too short to say anything
        _with_alt(GOOD_ALT, plot),             # fine
        "# plt.show() would draw here\nprint('no figure')",  # a comment is not a call
    )
    problems = figure_alt_problems(nb)
    assert len(problems) == 3, problems
    assert "no mystnb.image.alt" in problems[0]
    assert "file name or path" in problems[1]
    assert "shorter than" in problems[2]


def test_check_accepts_alt_merged_with_other_metadata(tmp_path):
    cell = (f"---\ntags: [hide-input]\nmystnb:\n  image:\n    alt: {GOOD_ALT}\n---\n"
            "import matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.show()")
    assert figure_alt_problems(_synthetic(tmp_path, cell)) == []


@pytest.mark.parametrize("alt", ["figures/reward_curve.png", "/tmp/plot.svg", "_build/html/_images/x.png",
                                 "a-very-long-name-without-any-spaces-in-it-at-all", "  "])
def test_path_like_or_empty_alt_is_a_problem(alt):
    assert alt_problem(alt) is not None


def test_detection_agrees_with_image_outputs_of_a_synthetic_run():
    png = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
           "metadata": {}}
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nplt.show()", outputs=[png]),
        nbformat.v4.new_code_cell("print(1)"),
        nbformat.v4.new_code_cell("ax.plot(x)  # on an axes made earlier", outputs=[png]),
        nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nplt.close(fig)"),
    ])
    assert image_cells(nb) == [0, 2]
    assert len(detection_mismatches(nb)) == 2


@pytest.mark.parametrize("path", [pytest.param(p, id=_rel(p)) for p in executable_documents()])
def test_detection_agrees_with_the_cached_build(path):
    """Where the site build's cache holds this page's current outputs, static detection must match them."""
    pytest.importorskip("jupyter_cache")
    executed = cached_notebook(path)
    if executed is None:
        pytest.skip("no cached execution of this page's current code")
    mismatches = detection_mismatches(executed)
    assert not mismatches, f"{_rel(path)}:\n" + "\n".join(mismatches)
