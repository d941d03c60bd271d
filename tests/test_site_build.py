"""Build the whole site once per test session (warnings are errors) and check what it produced.

The build executes every notebook through myst-nb + jupyter-cache (the cache under
``_build/.jupyter_cache`` is shared with ``nox -s docs``, so an unchanged notebook runs once).
``build_site()`` is cached, so the browser and notebook tests reuse the same output.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs" / "_ext"))
from site_extras import scan_pages  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SECTIONS = ("theory", "research", "training", "performance")

pytestmark = pytest.mark.build


@dataclass(frozen=True)
class Build:
    html: Path
    returncode: int
    log: str

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b:", line)]


@functools.cache
def build_site() -> Build:
    out = Path(tempfile.mkdtemp(prefix="site-test-")) / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-j", "auto", "-c", str(ROOT)]
    cmd += ["-b", "html", str(DOCS), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    return Build(html=out, returncode=proc.returncode, log=proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def site() -> Build:
    return build_site()


class _Links(HTMLParser):
    """Collect hrefs, optionally only those of sphinx-design cards (``a.sd-stretched-link``)."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.cards: list[str] = []
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
            if "sd-stretched-link" in (a.get("class") or ""):
                self.cards.append(a["href"])
        if tag == "meta" and a.get("name"):
            self.meta[a["name"]] = a.get("content", "")


def parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def target(page: Path, href: str, html_root: Path) -> Path | None:
    """The built file an internal link points at (None for external links and pure anchors)."""
    url = urlparse(href)
    if url.scheme or url.netloc or not url.path:
        return None
    rel = urljoin(page.relative_to(html_root).as_posix(), url.path)
    return html_root / rel


def test_build_succeeds_without_warnings(site):
    assert site.returncode == 0 and not site.warnings, "\n".join(site.warnings) or site.log[-3000:]


def test_every_internal_link_resolves(site):
    broken = []
    for page in site.html.rglob("*.html"):
        for href in parse(page).links:
            dest = target(page, href, site.html)
            if dest is not None and not dest.exists():
                broken.append(f"{page.relative_to(site.html)} -> {href}")
    assert not broken, "\n".join(sorted(set(broken)))


def test_landing_page_cards_resolve_and_cover_every_section_page(site):
    index = site.html / "index.html"
    cards = parse(index).cards
    assert cards, "the landing page has no cards"
    missing = [c for c in cards if not target(index, c, site.html).exists()]
    assert not missing, f"cards pointing at pages that were not built: {missing}"
    carded = {target(index, c, site.html).resolve() for c in cards}
    pages = [p for s in SECTIONS for p in sorted((DOCS / s).glob("*.md")) if p.name != "index.md"]
    uncarded = [
        p.relative_to(DOCS).as_posix()
        for p in pages
        if (site.html / p.relative_to(DOCS).with_suffix(".html")).resolve() not in carded
    ]
    assert not uncarded, f"section pages without a landing-page card: {uncarded}"
    duplicated = sorted({c for c in cards if cards.count(c) > 1})
    assert not duplicated, f"pages with more than one landing-page card: {duplicated}"
    assert len(cards) == len(pages), f"{len(cards)} cards for {len(pages)} section pages"


def test_meta_description_comes_from_front_matter(site):
    meta = parse(site.html / "index.html").meta
    assert "description" in meta and meta["description"].startswith("Advanced topics for AI researchers")
    # every page with a description in its front matter carries it as <meta name="description">
    pages = scan_pages(DOCS)
    described = {d: fm["description"] for d, fm in pages.items() if fm.get("description")}
    assert len(described) > 1
    wrong = [
        d for d, text in described.items() if parse(site.html / f"{d}.html").meta.get("description") != text
    ]
    assert not wrong, f"pages whose meta description differs from their front matter: {wrong}"


def test_tag_pages_exist_and_list_their_pages(site):
    index = site.html / "_tags" / "index.html"
    assert index.exists()
    # the landing page carries the tag "theory": its tag page exists and links back to it
    theory = site.html / "_tags" / "theory.html"
    assert theory.exists()
    assert any(target(theory, h, site.html) == site.html / "index.html" for h in parse(theory).links)
    # and the tag is visible on the landing page, linking to that tag page
    landing = site.html / "index.html"
    assert any(target(landing, h, site.html) == theory for h in parse(landing).links)


def test_intersphinx_resolves_torch_and_python_offline(site):
    html = (site.html / "contributing.html").read_text(encoding="utf-8")
    assert "https://docs.pytorch.org/docs/stable/generated/torch.nn.functional.log_softmax.html" in html
    assert "https://docs.python.org/3/library/functools.html#functools.cache" in html


def test_no_page_loads_anything_from_another_host(site):
    offending = []
    pattern = re.compile(
        r"<(script|link|img|iframe)\b[^>]*\b(src|href)=\"(https?:)?//[^\"]*\"", re.IGNORECASE
    )
    for page in site.html.rglob("*.html"):
        for match in pattern.finditer(page.read_text(encoding="utf-8")):
            tag = match.group(0)
            if match.group(1).lower() == "link" and re.search(r'rel="(canonical|edit)"', tag):
                continue
            offending.append(f"{page.relative_to(site.html)}: {tag}")
    assert not offending, "\n".join(offending[:20])


def test_browser_typeset_display_math_is_escaped_html():
    # Without node (KATEX_PRERENDER=0) the TeX goes into the page for KaTeX to typeset in the browser:
    # `<` must arrive as text, not open a tag that swallows the rest of the equation.
    code = (
        "import conf, types, sphinxcontrib.katex as k; from docutils import nodes\n"
        "conf.setup(types.SimpleNamespace(add_js_file=lambda *a, **kw: None))\n"
        "print(k.get_latex(nodes.math_block('s<r', 's<r')), k.get_latex(nodes.math('a<b', 'a<b')))\n"
    )
    env = {**os.environ, "KATEX_PRERENDER": "0"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["s&lt;r", "a<b"]  # inline math is escaped by the extension itself


def test_notebook_pages_link_to_their_files_in_the_repository(site):
    """Edit, source and Binder links name files that exist without going through the docs/examples
    symlink (GitHub does not follow a symlinked folder in a URL)."""
    pages = sorted((site.html / "examples").rglob("*.html"))
    pages = [p for p in pages if "gpu-runs" not in p.parts]
    assert pages
    github = re.compile(r"https://github\.com/[^/]+/[^/]+/(?:blob|edit)/main/([^?#]+)")
    binder = re.compile(r"https://mybinder\.org/v2/gh/[^?]+\?urlpath=lab/tree/([^&#]+)")
    paths = set()
    for page in pages:
        for href in parse(page).links:
            match = github.match(href) or binder.match(href)
            if match:
                paths.add(match.group(1))
    assert len(paths) >= len(pages), f"edit/source/launch links missing: {sorted(paths)[:5]}"
    through_link = sorted(p for p in paths if (ROOT / p).resolve() != ROOT / p or not (ROOT / p).is_file())
    assert not through_link, f"links through a symlink or to no file: {through_link[:5]}"
