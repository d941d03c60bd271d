"""Lighter pages: nothing in ``<head>`` blocks the first paint that does not have to.

- Every script with a ``src`` loads with ``defer`` (Sphinx's and the extensions' small helpers,
  the theme's), and every inline script becomes
  ``type="module"``: module and deferred scripts run in document order once the page is parsed, so
  ``DOCUMENTATION_OPTIONS.pagename = ...`` still runs after documentation_options.js defines it.
  The search page keeps them as they are: its searchtools.js runs in the body and needs doctools.js.
- Pages with math preload the two KaTeX fonts nearly every expression uses, so prerendered
  equations do not wait for the stylesheet before their fonts start to download; pages without math
  do not load KaTeX's stylesheets at all.

``tests/test_browser.py`` checks that pages still work with this (copy buttons, tabs, search, no
console errors), and ``nox -s lighthouse`` measures the effect.
"""

from __future__ import annotations

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
    return {"parallel_read_safe": True, "parallel_write_safe": True}
