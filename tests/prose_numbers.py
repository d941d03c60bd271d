"""Find measured numbers typed into prose instead of glued from the notebook that computed them.

A *measured* number is a decimal (``0.055``, ``1.18``) or a percentage (``98.5%``) that a notebook's
executed outputs contain (printed, displayed or glued) and that no code cell of it contains as a
literal (so hyperparameters such as ``lr=3e-2`` or ``eps=0.2`` stay typed). A page's prose must
not contain one, rounded or not: it pastes it with ``{glue:text}`` instead.

Prose is the Markdown text of a page or notebook outside front matter, code, math, inline code and
roles (a ``{glue:text}`` role is not prose). Numbers with fewer than two significant digits
(``0.5``, ``2.0``) are too common to attribute and are not checked, nor are integers.

    python tests/prose_numbers.py                       # every page, outputs from the build's cache
    python tests/prose_numbers.py docs/training/training-stability.md
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

_FRONT = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.S)
_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n.*?^\1[ \t]*$", re.S | re.M)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<!\\)\$[^$\n]+?\$")
_ROLE = re.compile(r"\{[\w:.-]+\}`[^`]*`")
_CODE = re.compile(r"`[^`\n]*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)|<https?://[^>]*>")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_DIRECTIVE_OPTION = re.compile(r"^:[\w-]+:.*$", re.M)
# 1.18, -0.53, 98.5%, 63 %; not part of a word, a version (2.13.0) or a path:line (x.py:12)
_NUMBER = re.compile(r"(?<![\w.\-−/])[-−]?(\d+(?:\.\d+)?)(\s?%)?(?![\w]|\.\d)")
# Conventional levels (a 95% interval) are not measurements, even where an output prints them too.
CONVENTIONS = {"90%", "95%", "99%"}
_CODE_LITERAL = re.compile(r"(?<![\w.])(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    text: str
    output: str

    def __str__(self) -> str:
        rel = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{rel}:{self.line}: {self.text!r} is a measured number (output {self.output!r}); glue it"


def prose(text: str) -> str:
    """The prose of a MyST file, with everything that is not prose blanked (line numbers kept)."""

    def blank(match: re.Match) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    for pattern in (_FRONT, _COMMENT, _FENCE, _DISPLAY_MATH, _ROLE, _CODE, _INLINE_MATH, _LINK_TARGET,
                    _DIRECTIVE_OPTION):
        text = pattern.sub(blank, text)
    return text


def _significant_digits(digits: str) -> int:
    return len(digits.replace(".", "").lstrip("0"))


def output_numbers(texts: list[str]) -> set[str]:
    """Every decimal and percentage in a notebook's outputs, as written there."""
    found = set()
    for text in texts:
        for match in _NUMBER.finditer(text):
            digits, percent = match.group(1), match.group(2)
            if "." in digits or percent:
                found.add(digits + ("%" if percent else ""))
    return found


def code_literals(code: str) -> set[Decimal]:
    """Numeric literals in code cells (``3e-2`` -> 0.03), and their percentages."""
    values = set()
    for literal in _CODE_LITERAL.findall(code):
        try:
            value = Decimal(literal)
        except InvalidOperation:
            continue
        values |= {value.normalize(), (value * 100).normalize()}
    return values


def _rounds_to(output: str, typed: Decimal, places: int, percent: bool) -> bool:
    """Whether an output number, rounded to the typed number's places, is the typed number.

    A typed percentage also matches an output fraction (0.985 -> 98.5%).
    """
    digits = output.rstrip("%")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    value = Decimal(digits)
    if output.endswith("%") != percent:
        if not percent:  # an output percentage is not typed as a plain decimal
            return False
        value, decimals = value * 100, decimals - 2
    return decimals >= places and round(value, places) == typed


def typed_measured_numbers(
    path: Path, outputs: list[str], code: str, text: str | None = None
) -> list[Finding]:
    """Measured numbers (in ``outputs`` but not literals of ``code``) typed into ``path``'s prose."""
    text = path.read_text(encoding="utf-8") if text is None else text
    measured = output_numbers(outputs)
    constants = code_literals(code)
    findings = []
    for lineno, line in enumerate(prose(text).splitlines(), start=1):
        for match in _NUMBER.finditer(line):
            digits, percent = match.group(1), bool(match.group(2))
            if ("." not in digits and not percent) or _significant_digits(digits) < 2:
                continue
            typed = Decimal(digits)
            if typed.normalize() in constants or (percent and f"{digits}%" in CONVENTIONS):
                continue
            places = len(digits.split(".")[1]) if "." in digits else 0
            hits = sorted(o for o in measured if _rounds_to(o, typed, places, percent))
            if hits:
                findings.append(Finding(path, lineno, match.group(0).strip(), hits[0]))
    return findings


# -- Pages and the notebooks they report ---------------------------------------------
def code_cells(text: str) -> str:
    return "\n".join(re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", text, flags=re.M | re.S))


def notebooks_of(page: Path) -> list[Path]:
    """The executable documents a page reports: itself, if it has code cells, and notebooks it links."""
    from notebook_runner import is_notebook

    text = page.read_text(encoding="utf-8")
    found = [page] if is_notebook(page) else []
    for ref in sorted(set(re.findall(r"/?examples/([\w-]+/[\w.-]+?)(?:\.md)?(?=[`>\s:]|$)", text, re.M))):
        nb = EXAMPLES / f"{ref}.md"
        if nb.is_file() and nb not in found and nb.parent.name != "gpu-runs":
            found.append(nb)
    return found


def pages() -> list[Path]:
    """Every page and notebook whose prose is checked."""
    docs = [p for p in sorted(DOCS.rglob("*.md")) if "examples" not in p.relative_to(DOCS).parts[:1]
            and p.relative_to(DOCS).parts[0] not in {"_build", "_static", "_tags", "_ext", "_inventories"}]
    nbs = [p for p in sorted(EXAMPLES.glob("*/*.md")) if p.parent.name not in {"rlref", "gpu-runs"}
           and p.name != "README.md"]
    return docs + nbs


def executed_texts(notebook) -> list[str]:
    """Every text output of an executed notebook: streams, text/plain, and glued (hidden) values."""
    texts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.endswith(("text/plain", "text/html", "text/markdown")):
                    texts.append(value if isinstance(value, str) else "".join(value))
    return texts


def glued_values(notebook) -> dict[str, str]:
    """name -> text/plain of every value an executed notebook glued (shown or not)."""
    values = {}
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is None:
                continue
            plain = [v for k, v in out.get("data", {}).items() if k.endswith("text/plain")]
            values[name] = plain[0] if plain else ""
    return values


def _rel(path: Path):
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


_GLUE_REF = re.compile(r"\{glue(?::(\w+))?\}`([^`]+)`")


def glue_problems(page: Path, glued_of) -> list[str]:
    """Glue references on a page whose key its notebook did not glue, or whose format cannot apply.

    ``glued_of(notebook_path) -> {name: text/plain}``. Cross-document keys are written
    ``/examples/<section>/<slug>.md::name:fmt`` (a format spec is required after ``::``).
    """
    from ast import literal_eval

    text = page.read_text(encoding="utf-8")
    # roles shown as examples (in fences or ``double-backtick`` code) are not references
    shown = re.compile(r"^(`{3,}|~{3,})(?!\{)[^\n]*\n.*?^\1[ \t]*$|``.+?``", re.S | re.M)
    text = shown.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    problems = []
    for match in _GLUE_REF.finditer(text):
        kind, ref = match.group(1) or "any", match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        where = f"{_rel(page)}:{line}"
        if "::" in ref:
            doc, rest = ref.split("::", 1)
            nb = (DOCS / doc.lstrip("/")) if doc.startswith("/") else (page.parent / doc)
            nb = nb.resolve()
            if kind == "text" and ":" not in rest:
                problems.append(f"{where}: {ref!r} needs a format spec after the key (e.g. ':.3f' or ':s')")
                continue
        else:
            nb, rest = page, ref
        key, _, fmt = rest.partition(":") if kind == "text" else (rest, "", "")
        if not nb.is_file():
            problems.append(f"{where}: {ref!r} names {nb}, which does not exist")
            continue
        values = glued_of(nb)
        if key not in values:
            problems.append(f"{where}: no value glued as {key!r} in {_rel(nb)}")
            continue
        if fmt and fmt[-1] in "eEfFgGn%d":
            try:
                value = literal_eval(values[key])
                format(float(value) if fmt[-1] != "d" else int(value), fmt)
            except (ValueError, SyntaxError, TypeError):
                problems.append(f"{where}: {key!r} is {values[key]!r}, which format {fmt!r} cannot apply to")
    return problems


def check(paths: list[Path], outputs_of) -> list[Finding]:
    """Findings for each page, given ``outputs_of(notebook) -> list[str]``."""
    findings = []
    for page in paths:
        outputs, code = [], ""
        for nb in notebooks_of(page):
            outputs += outputs_of(nb)
            code += code_cells(nb.read_text(encoding="utf-8"))
        if outputs:
            findings += typed_measured_numbers(page, outputs, code)
    return findings


def main() -> int:
    from notebook_runner import cached_notebook, execute

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pages", nargs="*", type=Path)
    args = parser.parse_args()

    executed_cache = {}

    def executed(nb: Path):
        if nb not in executed_cache:
            found = cached_notebook(nb)
            if found is None:
                print(f"(executing {nb.relative_to(ROOT)}: not in the execution cache)", file=sys.stderr)
                found = execute(nb).notebook
            executed_cache[nb] = found
        return executed_cache[nb]

    targets = [p.resolve() for p in args.pages] or pages()
    findings = check(targets, lambda nb: executed_texts(executed(nb)))
    problems = [m for page in targets for m in glue_problems(page, lambda nb: glued_values(executed(nb)))]
    for line in [str(f) for f in findings] + problems:
        print(line)
    print(f"{len(findings)} measured numbers typed into prose, {len(problems)} broken glue references")
    return 1 if findings or problems else 0


if __name__ == "__main__":
    sys.exit(main())
