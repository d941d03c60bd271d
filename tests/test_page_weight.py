"""docs/_ext/page_weight.py: deferred scripts and the purged theme stylesheet (unit level; the browser
tests load the built site with them)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from page_weight import deferred, purge_css, used_words  # noqa: E402
from sphinx.builders.html._assets import _JavaScript  # noqa: E402


def test_purge_drops_rules_for_unused_classes_and_keeps_the_rest():
    css = ('@charset "UTF-8";/*! Licence x.com */:root{--c:1}.used,.unused{a:1}.unused{b:1}'
           '@media (min-width:1px){.unused .used{c:1}.used:not(.unused){d:1}}'
           '@media print{.unused{e:1}}@font-face{font-family:x}@keyframes k{0%{f:0}}'
           '.dropdown-menu-end{g:1}:is(.used,.unused) p{h:1}')
    out = purge_css(css, {"used"})
    assert out == ('@charset "UTF-8";/*! Licence x.com */:root{--c:1}.used{a:1}'
                   '@media (min-width:1px){.used:not(.unused){d:1}}@font-face{font-family:x}'
                   '@keyframes k{0%{f:0}}.dropdown-menu-end{g:1}:is(.used,.unused) p{h:1}')


def test_used_words_reads_pages_and_scripts(tmp_path):
    (tmp_path / "_static").mkdir()
    (tmp_path / "a.html").write_text('<div class="card-body">')
    (tmp_path / "_static" / "x.js").write_text('el.classList.add("is-open")')
    assert {"card-body", "is-open"} <= used_words(tmp_path)


def test_scripts_are_deferred_and_inline_code_runs_as_a_module_in_order():
    assert deferred(_JavaScript("a.js")).attributes == {"defer": "defer"}
    assert deferred(_JavaScript("a.js", **{"async": "async"})).attributes == {"async": "async"}
    inline = deferred(_JavaScript(None, body="DOCUMENTATION_OPTIONS.pagename = 'x';"))
    assert inline.attributes["type"] == "module"
    data = _JavaScript(None, body="{}", type="application/json")
    assert deferred(data) is data
