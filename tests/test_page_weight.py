"""docs/_ext/page_weight.py: deferred scripts and the purged theme stylesheet (unit level; the browser
tests load the built site with them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from page_weight import (  # noqa: E402
    deferred,
    icon_codepoints,
    lazy_images,
    lazy_tab_stops,
    purge_css,
    subset_icon_fonts,
    used_words,
)
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


def test_icon_fonts_are_cut_to_the_glyphs_the_stylesheet_names(tmp_path):
    import shutil

    import pydata_sphinx_theme
    from fontTools.ttLib import TTFont

    webfonts = next(Path(pydata_sphinx_theme.__file__).parent.rglob("fontawesome/webfonts"))
    (tmp_path / "fontawesome" / "webfonts").mkdir(parents=True)
    (tmp_path / "styles").mkdir()
    source = tmp_path / "fontawesome" / "webfonts" / "fa-brands-400.woff2"
    shutil.copy(webfonts / "fa-brands-400.woff2", source)
    css = ('@font-face{font-family:Font Awesome\\ 7 Brands;'
           'src:url(../fontawesome/webfonts/fa-brands-400.woff2)}.fa-github{--fa:"\\f09b"}')
    out = subset_icon_fonts(css, tmp_path / "styles", other_css='.x:after{content:"\\f113"}')
    assert "url(../fontawesome/webfonts/fa-brands-400.subset.woff)" in out and ".woff2" not in out
    subset = tmp_path / "fontawesome" / "webfonts" / "fa-brands-400.subset.woff"
    kept = set(TTFont(subset).getBestCmap())
    full = set(TTFont(source).getBestCmap())
    assert {0xF09B, 0xF113} <= kept  # the one in this stylesheet and the one in another
    assert len(full) > 400 and len(kept & full) == 2 and subset.stat().st_size < source.stat().st_size / 20
    assert 0xF09B in icon_codepoints('--fa:"\\f09b"') and ord("a") in icon_codepoints("")


def test_figures_load_lazily_and_other_images_are_left_alone():
    html = ('<img alt="a" src="../_images/fig.png" /><img src="_static/logo.svg" />'
            '<img loading="eager" src="_images/x.png" />')
    assert lazy_images(html) == ('<img loading="lazy" decoding="async" alt="a" src="../_images/fig.png" />'
                                 '<img src="_static/logo.svg" /><img loading="eager" src="_images/x.png" />')


def test_the_locked_theme_s_tab_stop_check_is_routed_to_the_lazy_one():
    """The installed theme's script holds the check once; patched, it calls window.siteTabStop
    (falling back to the theme's own check), loses the stale source map, and stays so when patched again."""
    import pydata_sphinx_theme

    theme = Path(pydata_sphinx_theme.__file__).parent / "theme" / "pydata_sphinx_theme" / "static" / "scripts"
    js = (theme / "pydata-sphinx-theme.js").read_text(encoding="utf-8")
    out = lazy_tab_stops(js)
    assert "window.siteTabStop?window.siteTabStop(e):(e.tabIndex=e.scrollWidth>" in out
    assert "sourceMappingURL" in js and "sourceMappingURL" not in out
    assert len(out) - len(js) < 60 and lazy_tab_stops(out) == out
    with pytest.raises(ValueError, match="update THEME_TAB_STOP"):
        lazy_tab_stops("function other(){}")
