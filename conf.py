"""Sphinx configuration for NeMo RL Advanced Topics.

Build from the repository root: ``sphinx-build -c . docs _build/html`` (or ``nox -s docs``).
Source pages live in ``docs/``; notebooks live in ``examples/`` and reach the site through
the relative symlink ``docs/examples -> ../examples``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "examples"))  # so notebooks and autodoc find ``rlref`` without install
sys.path.insert(0, str(ROOT / "docs" / "_ext"))  # this site's own small extensions

# -- Project information -----------------------------------------------------
project = "NeMo RL Advanced Topics"
author = "NeMo RL Advanced Topics contributors"
copyright = "2026, NeMo RL Advanced Topics contributors"
repository_url = os.environ.get("DOCS_REPOSITORY_URL", "https://github.com/NVIDIA-NeMo/RL-advanced-topics")

# -- Extensions --------------------------------------------------------------
extensions = [
    "myst_nb",  # MyST Markdown pages and executable notebooks (includes myst_parser)
    "sphinx_design",  # grid cards, badges, tabs
    "sphinx_copybutton",  # copy buttons on code cells
    "sphinx.ext.intersphinx",  # links to the Python and PyTorch API docs
    "sphinxcontrib.katex",  # math as HTML made at build time (KaTeX under node), no math JavaScript
    "site_extras",  # meta descriptions, tag pages, stored GPU outputs (docs/_ext/site_extras.py)
    "page_weight",  # deferred scripts, KaTeX fonts preloaded where math is (docs/_ext/page_weight.py)
]

# -- MyST options ------------------------------------------------------------
myst_enable_extensions = [
    "amsmath",  # \begin{align} ... environments
    "dollarmath",  # $inline$ and $$display$$ math, with (label) numbering
    "colon_fence",  # ::: fences for directives such as cards and admonitions
    "deflist",
    "fieldlist",
    "substitution",
]
myst_dmath_double_inline = True
myst_heading_anchors = 3
# -- Math: KaTeX, prerendered to HTML at build time ----------------------------------
# sphinxcontrib-katex runs its bundled KaTeX (katex.min.js, 0.16.22) under node while the site is built,
# so pages carry finished HTML and no math JavaScript. The stylesheet and its woff2 fonts are served
# from docs/_static/katex (vendored from npm katex@0.16.22, the same version; README there), so no
# page asks another host for anything.
# Without node, math is typeset in the reader's browser by the same KaTeX served from this build
# (slower pages, same result). KATEX_PRERENDER=1 makes node compulsory (a build that publishes the
# site should set it); KATEX_PRERENDER=0 forces the browser path.
html_math_renderer = "katex"
katex_css_path = "katex/katex.min.css"
_node = shutil.which("node")
katex_prerender = {"1": True, "0": False}.get(os.environ.get("KATEX_PRERENDER", ""), _node is not None)
if katex_prerender and _node is None:
    raise RuntimeError(
        "KATEX_PRERENDER=1 but `node` is not on PATH: install Node.js (apt-get install nodejs) "
        "or unset KATEX_PRERENDER to typeset math in the browser instead"
    )
if not katex_prerender:
    print("conf.py: math is typeset in the browser (node not found or KATEX_PRERENDER=0)", file=sys.stderr)
    # sphinxcontrib-katex copies its own katex.min.js; it ships no auto-render, which comes from
    # _static/katex (added in setup() below, after katex.min.js). Naming katex.min.js here again only
    # satisfies the extension's check that an auto-render path is set.
    katex_autorender_path = "katex.min.js"
math_numfig = False  # equations numbered per page; {eq} still links across pages
numfig = True

# -- Sources -------------------------------------------------------------------
exclude_patterns = [
    "_build",
    "_ext",
    "_static",
    "_inventories",
    "**/.ipynb_checkpoints",
    "examples/rlref/**",
    "examples/**/README.md",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# -- Notebook execution (myst-nb + jupyter-cache) ------------------------------
nb_execution_mode = os.environ.get("NB_EXECUTION_MODE", "cache")  # unchanged notebooks do not re-run
nb_execution_cache_path = os.environ.get("NB_EXECUTION_CACHE_PATH", str(ROOT / "_build" / ".jupyter_cache"))
# nbclient's timeout, per cell: a cell running longer fails the build. A notebook may set its own in
# front matter (mystnb: {execution_timeout: 300}); the whole-notebook budget is tests/test_notebooks.py's.
nb_execution_timeout = 180
# A failing notebook does not stop the others: site_extras reports it as a warning naming the notebook,
# the code cell, its line in the .md source and the traceback (so -W fails the build), and
# `nox -s docs` prints every such report last.
nb_execution_raise_on_error = False
nb_execution_show_tb = False
nb_merge_streams = True
# Stored full-scale GPU outputs (nox -s notebooks-gpu) are shown as they are, never re-executed.
nb_execution_excludepatterns = ["gpu-runs/*/*.ipynb"]

# -- HTML theme ----------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "NeMo RL Advanced Topics"
html_static_path = ["docs/_static"]
html_theme_options = {
    "repository_url": repository_url,
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": True,
    "use_edit_page_button": True,
    "use_download_button": True,
    "use_source_button": True,
    "show_toc_level": 2,
}
# Launch links need a provider: Binder clones the repository and opens the MyST notebook in
# JupyterLab. Configuring one also makes the theme offer the executed notebook (myst-nb writes it to
# jupyter_execute/) as a ".ipynb" download next to the ".md" source.
html_theme_options["launch_buttons"] = {
    "binderhub_url": "https://mybinder.org",
    "notebook_interface": "jupyterlab",
}
# One search field on a wide screen: the header's (the theme's sidebar repeats it below the title).
html_sidebars = {"**": ["navbar-logo.html", "icon-links.html", "sbt-sidebar-nav.html"]}
html_favicon = "docs/_static/favicon.svg"
templates_path = ["docs/_templates"]  # layout.html: search scripts only on the search page, no fontawesome.js
html_css_files = ["site.css"]  # wrapping inline code, tables that scroll, badge and tag colours
html_js_files = ["tab-stops.js"]  # which code blocks scroll, measured near the screen (page_weight.py)
html_last_updated_fmt = ""
html_context = {"default_mode": "auto"}  # light/dark follows the reader's system (no console error)

# Copy code, not prompts or outputs.
copybutton_exclude = ".linenos, .gp, .go"
copybutton_selector = "div:not(.output) > div.highlight pre"


def setup(app):
    if not katex_prerender:
        app.add_js_file("katex/auto-render.min.js", priority=501)  # after katex.min.js (priority 500)
        # sphinxcontrib-katex writes a display equation's TeX into the page unescaped (inline math
        # and nowrap blocks it escapes), so `\sum_{s<r}` opened an HTML tag and the rest of the
        # equation was lost. Escape it as HTML text; the browser hands KaTeX the same characters back.
        import html

        import sphinxcontrib.katex as katex
        from docutils import nodes

        tex = katex.get_latex

        def get_latex(node):
            text = tex(node)
            if isinstance(node, nodes.math_block) and not node.get("nowrap"):
                return html.escape(text, quote=False)
            return text

        katex.get_latex = get_latex


# -- Intersphinx -------------------------------------------------------------------
# Inventories ship with the repository (docs/_inventories/README.md says where each comes from),
# so the build never needs the network; links still point at the online docs.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(ROOT / "docs" / "_inventories" / "python.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable", str(ROOT / "docs" / "_inventories" / "torch.inv")),
}
intersphinx_cache_limit = -1  # never expire the (local) inventories
intersphinx_timeout = 5

# -- Link check ------------------------------------------------------------------
# Only `nox -s linkcheck` reads these (it needs the network and is not part of CI).
# Most external links go to arxiv.org, which answers bursts of requests with 429 Too Many Requests:
# fewer workers, retries, a longer timeout, and waiting out Retry-After for up to three minutes.
linkcheck_workers = 2
linkcheck_retries = 3
linkcheck_timeout = 30
linkcheck_rate_limit_timeout = 180.0
linkcheck_report_timeouts_as_broken = False
# Local servers the pages tell the reader to start (python3 -m http.server ...) are not on the web.
linkcheck_ignore = [r"^https?://(localhost|127\.0\.0\.1)(:\d+)?(/.*)?$"]
# GitHub draws line anchors (#L123, #L10-L20) and README heading anchors with JavaScript, so they are
# not in the HTML linkcheck fetches: check that the file exists, not the anchor. Line anchors and
# arxiv PDF page anchors (#page=3) are skipped everywhere else too.
linkcheck_anchors_ignore_for_url = [r"^https://github\.com/"]
linkcheck_anchors_ignore = [r"^!", r"^L\d+(C\d+)?(-L\d+(C\d+)?)?$", r"^page=\d+$"]
# Redirects that are expected, so they count as working; any other redirect is reported as a warning
# (update the link to where it now points).
linkcheck_allowed_redirects = {
    # arxiv: http -> https, and /abs/<id> or /pdf/<id> -> the latest version (<id>vN)
    r"https?://(www\.)?arxiv\.org/(abs|pdf)/.*": r"https://arxiv\.org/(abs|pdf)/.*",
    # PyTorch's documentation moved to docs.pytorch.org
    r"https?://(www\.)?pytorch\.org/docs/.*": r"https://docs\.pytorch\.org/docs/.*",
    # a renamed GitHub repository or organisation, or a branch name resolved to a commit
    r"https://github\.com/.*": r"https://github\.com/.*",
    # a DOI resolves to its publisher's page
    r"https://doi\.org/.*": r".*",
}
