"""Lighter pages: nothing in ``<head>`` blocks the first paint that does not have to.

- Every script with a ``src`` loads with ``defer`` (Sphinx's and the extensions' small helpers,
  the theme's), and every inline script becomes
  ``type="module"``: module and deferred scripts run in document order once the page is parsed, so
  ``DOCUMENTATION_OPTIONS.pagename = ...`` still runs after documentation_options.js defines it.
  The search page keeps them as they are: its searchtools.js runs in the body and needs doctools.js.
- The theme's stylesheet loses the rules for classes that no built page and no script names
  (most of Bootstrap's utilities and Font Awesome's icon list); rules for classes that scripts
  compose at run time stay.
- The Font Awesome web fonts (225 KB for the two the pages load, and ``font-display: block`` holds
  back the first paint until they arrive) are cut to the glyphs the purged stylesheet still names,
  and served as WOFF files of a few KB (:func:`subset_icon_fonts`).
- The theme's load-time check of which code blocks and outputs scroll (it reads their sizes, which
  lays out every section ``content-visibility`` skipped) runs per element as it nears the screen,
  in ``_static/tab-stops.js`` (:func:`lazy_tab_stops`).
- Figures load lazily (``loading="lazy" decoding="async"`` on every image of ``_images/``): a
  notebook page's plots below the screen no longer compete with its text for the first paint.
- Pages with math preload the two KaTeX fonts nearly every expression uses, so prerendered
  equations do not wait for the stylesheet before their fonts start to download; pages without math
  do not load KaTeX's stylesheets at all.

``tests/test_browser.py`` checks that pages still work with this (copy buttons, tabs, search, no
console errors), and ``nox -s lighthouse`` measures the effect.
"""

from __future__ import annotations

import re
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.builders.html._assets import _JavaScript

#: The KaTeX fonts worth preloading: upright text and italic variables.
KATEX_PRELOAD_FONTS = ("KaTeX_Main-Regular.woff2", "KaTeX_Math-Italic.woff2")
KATEX_STYLESHEETS = ("_static/katex/katex.min.css", "_static/katex-math.css")


def deferred(js):
    """The same script, run after parsing: ``defer`` for a file, ``type="module"`` for inline code."""
    if not isinstance(js, _JavaScript):  # an old-style plain filename
        return _JavaScript(js, defer="defer")
    attributes = dict(js.attributes)
    if js.filename:
        if "async" in attributes or "defer" in attributes or attributes.get("type") == "module":
            return js
        attributes["defer"] = "defer"
    elif attributes.get("type", "text/javascript") == "text/javascript":
        attributes["type"] = "module"
    else:  # data blocks (application/json, ...) are not run at all
        return js
    return _JavaScript(js.filename, priority=js.priority, **attributes)


def _page_has_math(context: dict) -> bool:
    body = context.get("body") or ""
    return 'class="katex' in body or 'class="math' in body


def lighten(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    # search.html loads searchtools.js synchronously in its body, and it needs doctools.js at once.
    if "script_files" in context and pagename != "search":
        context["script_files"][:] = [deferred(js) for js in context["script_files"]]
    if "css_files" not in context:
        return
    has_math = _page_has_math(context)
    if not has_math:
        context["css_files"][:] = [
            css for css in context["css_files"]
            if str(getattr(css, "filename", css)).split("?")[0] not in KATEX_STYLESHEETS
        ]
    context["katex_preload_fonts"] = (
        [f"_static/katex/fonts/{name}" for name in KATEX_PRELOAD_FONTS] if has_math else []
    )


def setup(app: Sphinx) -> dict:
    # After the theme's own html-page-context handlers (default priority 500), which add inline scripts.
    app.connect("html-page-context", lighten, priority=900)
    app.connect("build-finished", purge_theme_stylesheet)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# -- The theme's stylesheet, without rules for classes no page or script uses --------------------
#: pydata-sphinx-theme.css is 377 KB (Bootstrap 5 and every Font Awesome icon), nearly all unused
#: here; a reader's browser downloads it and matches every rule on every page.
PURGED_STYLESHEETS = ("_static/styles/pydata-sphinx-theme.css",)
#: Classes Bootstrap and the theme add from script by composing names; rules for them always stay.
DYNAMIC_CLASS_WORDS = ("tooltip", "popover", "modal", "collapse", "dropdown", "offcanvas", "show", "fade",
                       "active", "disabled", "toast", "carousel", "was-validated", "scroll")
_CLASS = re.compile(r"\.(-?[_a-zA-Z][_a-zA-Z0-9-]*)")
_WORD = re.compile(r"[_a-zA-Z][_a-zA-Z0-9-]*")


def used_words(outdir: Path) -> set[str]:
    """Every word in the built pages and their scripts: a class outside this set can match nothing."""
    words: set[str] = set()
    for pattern in ("**/*.html", "_static/**/*.js"):
        for path in outdir.glob(pattern):
            words.update(_WORD.findall(path.read_text(encoding="utf-8", errors="replace")))
    return words


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses and brackets (selector lists like ``:is(.a, .b)``)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _selector_can_match(selector: str, words: set[str]) -> bool:
    # classes inside :not(...), :is(...), :where(...) and :has(...) need not all be present
    required = re.sub(r":(not|is|where|has)\((?:[^()]|\([^()]*\))*\)", "", selector)
    for name in _CLASS.findall(required):
        if name not in words and not any(w in name for w in DYNAMIC_CLASS_WORDS):
            return False
    return True


def purge_css(css: str, words: set[str]) -> str:
    """The stylesheet without the selectors (and rules) that need a class no page or script has."""
    out, i, n = [], 0, len(css)
    while i < n:
        brace = css.find("{", i)
        if brace < 0:
            out.append(css[i:])
            break
        prelude = css[i:brace]
        depth, j = 1, brace + 1
        while depth and j < n:  # the matching close brace (strings in this CSS hold no braces)
            depth += {"{": 1, "}": -1}.get(css[j], 0)
            j += 1
        body = css[brace + 1 : j - 1]
        # statements such as @charset "UTF-8"; and comments before the rule belong to the output
        lead, _, prelude = prelude.rpartition(";")
        if lead:
            out.append(lead + ";")
        out.extend(re.findall(r"/\*!.*?\*/", prelude, flags=re.S))  # licence notices stay
        prelude = re.sub(r"/\*.*?\*/", "", prelude, flags=re.S)
        head = prelude.strip()
        if head.startswith(("@media", "@supports")):
            inner = purge_css(body, words)
            if inner.strip():
                out.append(f"{prelude}{{{inner}}}")
        elif head.startswith("@") or not head:
            out.append(f"{prelude}{{{body}}}")
        else:
            kept = [s for s in _split_top(prelude, ",") if _selector_can_match(s, words)]
            if kept:
                out.append(",".join(kept) + "{" + body + "}")
        i = j
    return "".join(out)


def purge_theme_stylesheet(app: Sphinx, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    for page in outdir.glob("**/*.html"):
        text = page.read_text(encoding="utf-8")
        lazy = lazy_images(text)
        if lazy != text:
            page.write_text(lazy, encoding="utf-8")
    words = used_words(outdir)
    for name in PURGED_STYLESHEETS:
        path = outdir / name
        if path.is_file():
            others = "".join(p.read_text(encoding="utf-8", errors="replace")
                             for p in (outdir / "_static").glob("**/*.css") if p != path)
            css = subset_icon_fonts(purge_css(path.read_text(encoding="utf-8"), words), path.parent, others)
            path.write_text(css, encoding="utf-8")
    theme_js = outdir / THEME_SCRIPT
    if theme_js.is_file():
        try:
            theme_js.write_text(lazy_tab_stops(theme_js.read_text(encoding="utf-8")), encoding="utf-8")
        except ValueError as exc:
            from sphinx.util import logging

            logging.getLogger(__name__).warning(str(exc), type="site", subtype="page_weight")


# -- Which code blocks scroll: measured near the screen, not all at load -----------------------------
THEME_SCRIPT = "_static/scripts/pydata-sphinx-theme.js"
#: The theme's per-element check in its built script (addTabStopsToScrollableElements in the locked
#: pydata-sphinx-theme 0.20.0): reading the sizes forces layout of the sections the browser skipped.
THEME_TAB_STOP = "e.tabIndex=e.scrollWidth>e.clientWidth||e.scrollHeight>e.clientHeight?0:-1"
LAZY_TAB_STOP = f"window.siteTabStop?window.siteTabStop(e):({THEME_TAB_STOP})"


def lazy_tab_stops(js: str) -> str:
    """The theme's script with its tab-stop check routed to ``window.siteTabStop`` (tab-stops.js).

    Raises ValueError when the check is not found (another theme release), so the build says so
    instead of silently measuring every element at load again. The script's source-map comment goes:
    the theme's map no longer matches the edited line."""
    if LAZY_TAB_STOP in js:
        return js
    if js.count(THEME_TAB_STOP) != 1:
        raise ValueError(f"{THEME_SCRIPT}: the theme's tab-stop check {THEME_TAB_STOP!r} was found "
                         f"{js.count(THEME_TAB_STOP)} times, not once; update THEME_TAB_STOP in "
                         "docs/_ext/page_weight.py for this pydata-sphinx-theme release")
    return _SOURCE_MAP.sub("", js.replace(THEME_TAB_STOP, LAZY_TAB_STOP))


_SOURCE_MAP = re.compile(r"\n?//# sourceMappingURL=\S+\s*$")


# -- Figures load when they come near the screen ---------------------------------------------------
_FIGURE_IMG = re.compile(r'<img (?![^>]*\bloading=)(?=[^>]*\bsrc="[^"]*_images/)')


def lazy_images(html: str) -> str:
    """Every ``<img>`` of a built figure (``_images/``) without a ``loading`` attribute gets
    ``loading="lazy" decoding="async"``."""
    return _FIGURE_IMG.sub('<img loading="lazy" decoding="async" ', html)


# -- Icon fonts, cut to the glyphs the stylesheet names --------------------------------------------
_FONT_URL = re.compile(
    r"url\((?P<q>[\"']?)(?P<url>[^)\"']*?fontawesome/webfonts/(?P<name>[\w-]+)\.woff2)(?P=q)\)"
)
_ESCAPE = re.compile(r"\\([0-9a-fA-F]{2,6})")


def icon_codepoints(css: str) -> set[int]:
    """Every code point the stylesheet writes as a CSS escape (``--fa:"\\f09b"``), plus printable ASCII
    (Font Awesome maps a few icons to digits and letters)."""
    return {int(h, 16) for h in _ESCAPE.findall(css)} | set(range(0x20, 0x7F))


def subset_icon_fonts(css: str, css_dir: Path, other_css: str = "") -> str:
    """Write ``<font>.subset.woff`` next to each Font Awesome ``.woff2`` the stylesheet loads, holding
    only the glyphs of :func:`icon_codepoints` of this and the site's other stylesheets
    (``other_css``), and point the stylesheet at it."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    codepoints = icon_codepoints(css + other_css)
    written: dict[str, str] = {}

    def replace(match: re.Match) -> str:
        source = (css_dir / match["url"]).resolve()
        if not source.is_file():
            return match[0]
        target = source.with_name(f"{match['name']}.subset.woff")
        if match["url"] not in written:
            font = TTFont(source)
            options = subset.Options()
            options.flavor, options.layout_features, options.name_IDs = "woff", ["*"], ["*"]
            subsetter = subset.Subsetter(options)
            subsetter.populate(unicodes=codepoints & set(font.getBestCmap()))
            subsetter.subset(font)
            font.save(target)
            written[match["url"]] = match["url"][: -len(source.name)] + target.name
        return f"url({match['q']}{written[match['url']]}{match['q']})"

    return _FONT_URL.sub(replace, css)
