"""Load the built site in headless Chromium with everything outside localhost blocked.

Reuses the session's site build (tests/test_site_build.py). Needs Debian's chromium at
/usr/bin/chromium (``nox -s tests`` installs it when missing) and the ``playwright`` package;
Playwright's own browser download is not used.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import sync_playwright
from test_site_build import build_site

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
GRPO_PAGE = "theory/grpo-theory.html"
MATH_NOTEBOOK = "examples/theory/grpo-theory.html"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    # SITE_HTML=<dir> points these tests at an existing build (handy while writing them)
    html = Path(os.environ["SITE_HTML"]) if os.environ.get("SITE_HTML") else build_site().html
    if not (html / "index.html").exists():
        pytest.fail(f"the site build produced no index.html in {html}")
    handler = functools.partial(_Quiet, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", html
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (nox -s tests does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


class Visit:
    """A page with every non-localhost request aborted and recorded, and console errors collected."""

    def __init__(self, browser):
        self.context = browser.new_context(service_workers="block")
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.context.route("**/*", self._route)

    def _route(self, route):
        url = urlparse(route.request.url)
        if url.scheme in {"http", "https", "ws", "wss"} and url.hostname not in LOCAL_HOSTS:
            self.blocked.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    def check_stayed_local(self):
        outside = [u for u in self.requests if urlparse(u).scheme in {"http", "https"}]
        outside = [u for u in outside if urlparse(u).hostname not in LOCAL_HOSTS]
        assert not self.blocked and not outside, f"requests leaving localhost: {self.blocked + outside}"
        assert not self.errors, f"console errors: {self.errors}"

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser):
    v = Visit(browser)
    yield v
    v.close()


def test_landing_page_renders_cards_offline(server, visit):
    base, _ = server
    visit.page.goto(f"{base}/index.html", wait_until="networkidle")
    cards = visit.page.locator(".sd-card")
    assert cards.count() > 0, "no cards on the landing page"
    for i in range(cards.count()):
        assert cards.nth(i).is_visible()
        box = cards.nth(i).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 40, f"card {i} is not laid out: {box}"
    assert visit.page.locator('meta[name="description"]').count() == 1
    visit.check_stayed_local()


def test_notebook_page_renders_math_and_copy_buttons_offline(server, visit):
    base, html = server
    # the GRPO notebook, or else the first notebook page with math on it
    pages = [html / MATH_NOTEBOOK] + sorted((html / "examples").rglob("*.html"))
    with_math = [p for p in pages if p.exists() and 'class="math' in p.read_text(encoding="utf-8")]
    assert with_math, "no notebook page with math was built"
    page = with_math[0].relative_to(html).as_posix()
    visit.page.goto(f"{base}/{page}", wait_until="networkidle")
    visit.page.wait_for_selector(
        ".math .katex", timeout=30_000
    )  # KaTeX: prerendered, or typeset from _static/
    assert visit.page.locator(".math .katex").count() > 0
    assert visit.page.locator("button.copybtn").count() > 0
    assert visit.page.locator("div.cell_output").count() > 0  # executed outputs are on the page
    visit.check_stayed_local()


def test_search_finds_the_grpo_page_for_dual_clip(server, visit):
    base, html = server
    assert (html / GRPO_PAGE).exists(), f"{GRPO_PAGE} was not built"
    visit.page.goto(f"{base}/search.html?q=dual+clip", wait_until="networkidle")
    visit.page.wait_for_selector("#search-results ul.search li a", timeout=30_000)
    hrefs = visit.page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(e => e.href)")
    assert any(urlparse(h).path.endswith("/" + GRPO_PAGE) for h in hrefs), hrefs
    visit.check_stayed_local()


# -- Reader experience (issue 14) ---------------------------------------------------------------
# Math: every expression the build marks (span.math, div.math) holds KaTeX output once the page has
# loaded, and no TeX is left as visible text. Layout: at 390 px no page is wider than the screen.
# Landing page: first cards on the first desktop screen, no section twice, badges told apart by colour.
# Notebooks: an executed .ipynb download (outputs included) and a launch link on every notebook page.
RAW_TEX = re.compile(r"\\(frac|begin\{|end\{|sum_|mathbb|left[(\[|]|right[)\]|])|\$\$|\\\(|\\\[")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
NOT_PAGES = ("_static/", "_sources/", "_images/", "_generated/")


def site_pages(html: Path) -> list[str]:
    """Every HTML page of the built site, relative to its root."""
    pages = [p.relative_to(html).as_posix() for p in sorted(html.rglob("*.html"))]
    return [p for p in pages if not any(part in p for part in NOT_PAGES)]


def notebook_pages(html: Path) -> list[str]:
    """Pages built from executable notebooks (myst-nb marks their code cells ``cell docutils``)."""
    return [p for p in site_pages(html) if 'class="cell docutils container"' in (html / p).read_text("utf-8")]


def contrast(fg: str, bg: str) -> float:
    """WCAG contrast ratio of two ``rgb(...)``/``rgba(...)`` colours (alpha ignored)."""

    def luminance(color: str) -> float:
        r, g, b = (int(float(v)) / 255 for v in re.findall(r"[\d.]+", color)[:3])
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.fixture
def phone(browser):
    v = Visit(browser)
    v.page.set_viewport_size(PHONE)
    yield v
    v.close()


def test_every_math_expression_renders(server, visit):
    base, html = server
    pages = [p for p in site_pages(html) if 'class="math' in (html / p).read_text("utf-8")]
    assert pages, "no page with math was built"
    total = 0
    for page in pages:
        visit.page.goto(f"{base}/{page}", wait_until="load")
        counts = visit.page.evaluate(
            """() => {
                const math = [...document.querySelectorAll('span.math, div.math')];
                const unrendered = math.filter(m => !m.querySelector('.katex'))
                    .map(m => m.textContent.slice(0, 80));
                const errors = [...document.querySelectorAll('.katex-error')]
                    .map(e => e.textContent.slice(0, 80));
                const body = document.querySelector('article').cloneNode(true);
                body.querySelectorAll('.katex, pre, code, script, style, .highlight')
                    .forEach(e => e.remove());
                return {n: math.length, unrendered, errors, text: body.textContent};
            }"""
        )
        assert counts["n"] > 0, f"{page}: no math element"
        assert not counts["unrendered"], f"{page}: math not rendered: {counts['unrendered'][:3]}"
        assert not counts["errors"], f"{page}: KaTeX errors: {counts['errors'][:3]}"
        raw = RAW_TEX.search(counts["text"])
        assert raw is None, (
            f"{page}: raw TeX left in the text: {counts['text'][max(0, raw.start() - 40) : raw.end() + 40]!r}"
        )
        total += counts["n"]
    assert total >= 100, f"only {total} math expressions on {len(pages)} pages"
    visit.check_stayed_local()


def test_no_page_is_wider_than_a_phone(server, phone):
    base, html = server
    wide = []
    for page in site_pages(html):
        phone.page.goto(f"{base}/{page}", wait_until="load")
        # site.css lets the browser skip the layout of sections far off screen (content-visibility):
        # lay every section out, so that a wide element anywhere on the page counts
        width = phone.page.evaluate(
            """() => {
                document.querySelectorAll('section').forEach(s => { s.style.contentVisibility = 'visible'; });
                return Math.max(document.documentElement.scrollWidth, document.body.scrollWidth); }"""
        )
        if width > PHONE["width"] + 1:
            culprit = phone.page.evaluate(
                """(w) => { for (const e of document.querySelectorAll('.bd-article *')) {
                        const r = e.getBoundingClientRect();
                        if (r.right > w + 1 && e.offsetParent) return e.outerHTML.slice(0, 120); }
                    return ''; }""",
                PHONE["width"],
            )
            wide.append(f"{page}: {width} px ({culprit})")
    assert not wide, f"{len(wide)} page(s) wider than {PHONE['width']} px:\n" + "\n".join(wide)
    phone.check_stayed_local()


def test_scrolling_code_is_focusable_once_its_section_nears_the_screen(server, phone):
    """The theme's tab stops (tabindex 0 on code and outputs that scroll), measured lazily by
    _static/tab-stops.js: before a section is near the screen its elements stay focusable; after
    the reader scrolled past everything, exactly the overflowing ones are."""
    base, _ = server
    phone.page.goto(f"{base}/{MATH_NOTEBOOK}", wait_until="load")
    selector = "pre, .cell_output > .output, .pst-scrollable-table-container"
    before = phone.page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].map(e => e.getAttribute('tabindex'))""", selector
    )
    assert before and all(t in ("0", "-1") for t in before), before  # every element has its tab stop
    assert "0" in before[len(before) // 2:]  # far down the page: not measured yet, still reachable
    phone.page.evaluate(
        """async () => {
            for (let y = 0; y <= document.documentElement.scrollHeight; y += window.innerHeight / 2) {
                window.scrollTo(0, y);
                await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
            }
        }"""
    )
    result = phone.page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].map(e => [e.tabIndex,
            e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight, e.outerHTML.slice(0, 80)])""",
        selector,
    )
    wrong = [html for tab, overflows, html in result if tab != (0 if overflows else -1)]
    assert not wrong, f"{len(wrong)} element(s) with the wrong tab stop after scrolling: {wrong[:3]}"
    assert {tab for tab, _, _ in result} == {0, -1}  # some scroll on a phone, some do not
    phone.check_stayed_local()


def test_landing_page_leads_with_cards(server, visit):
    base, _ = server
    visit.page.set_viewport_size(DESKTOP)
    visit.page.goto(f"{base}/index.html", wait_until="networkidle")
    first = visit.page.locator(".sd-card").first.bounding_box()
    assert first and first["y"] < DESKTOP["height"], f"first card at y={first} is below the first screen"
    headings = visit.page.eval_on_selector_all(
        "article h2, article h3", "els => els.map(e => e.textContent.replace('#', '').trim())"
    )
    assert len(headings) == len(set(headings)), f"a section appears twice: {headings}"
    toc = visit.page.eval_on_selector_all(".bd-toc-nav a", "els => els.map(e => e.textContent.trim())")
    assert len(toc) == len(set(toc)), f"the page contents list a section twice: {toc}"
    # each category's description sits directly above its own grid
    layout = visit.page.evaluate(
        """() => [...document.querySelectorAll('article section > h2')].map(h => {
                const next = h.nextElementSibling, grid = next && next.nextElementSibling;
                return [h.textContent, next && next.tagName, grid && grid.className];
            })"""
    )
    assert len(layout) == 4, layout
    for title, after, grid in layout:
        assert after == "P" and grid and "sd-container" in grid, f"{title}: {after} then {grid}"
    # badges that differ in meaning differ in colour; every badge's text is readable
    badges = visit.page.eval_on_selector_all(
        ".sd-card .sd-badge",
        """els => els.map(e => { const s = getComputedStyle(e);
            return [e.textContent.trim(), s.backgroundColor, s.color, s.borderColor]; })""",
    )
    look = {}
    for text, background, color, border in badges:
        look.setdefault(text, set()).add((background, color, border))
    assert all(len(v) == 1 for v in look.values()), f"one badge label, several looks: {look}"
    looks = [next(iter(v)) for v in look.values()]
    assert len(set(looks)) == len(looks), f"badges with different labels look alike: {look}"
    for text, background, color, _ in badges:
        if "rgba(0, 0, 0, 0)" not in background:
            assert contrast(color, background) >= 4.5, f"badge {text}: {color} on {background}"
    visit.check_stayed_local()


def test_tag_pills_have_readable_contrast(server, visit):
    base, html = server
    visit.page.goto(f"{base}/{GRPO_PAGE}", wait_until="networkidle")
    pills = visit.page.eval_on_selector_all(
        "article .sd-badge",
        "els => els.map(e => { const s = getComputedStyle(e); "
        "return [e.textContent, s.color, s.backgroundColor]; })",
    )
    assert pills, "no tag pills on the GRPO page"
    low = [(t, round(contrast(c, b), 2)) for t, c, b in pills if contrast(c, b) < 4.5]
    assert not low, f"tag pills below 4.5:1: {low}"
    visit.check_stayed_local()


def test_every_page_has_a_description_and_a_favicon(server):
    _, html = server
    missing = []
    for page in site_pages(html):
        text = (html / page).read_text("utf-8")
        if not re.search(r'<meta name="description" content="[^"]{20,}"', text) and page not in {
            "search.html",
            "genindex.html",
        }:
            missing.append(f"{page}: no description")
        if 'rel="icon"' not in text:
            missing.append(f"{page}: no favicon")
    assert not missing, "\n".join(missing)


def test_notebooks_download_as_executed_ipynb_and_launch_elsewhere(server, visit, tmp_path):
    import nbformat

    base, html = server
    pages = notebook_pages(html)
    assert pages, "no notebook page was built"
    for page in pages:
        text = (html / page).read_text("utf-8")
        ipynb = re.search(r'href="([^"]+\.ipynb)"', text)
        assert ipynb, f"{page}: no .ipynb download"
        assert (html / page).parent.joinpath(ipynb.group(1)).resolve().is_file(), (
            f"{page}: {ipynb.group(1)} missing"
        )
        assert re.search(r'href="https://(mybinder\.org|colab\.research\.google\.com)/', text), (
            f"{page}: no launch link"
        )
    # download one through the page's menu, as a reader would
    page = MATH_NOTEBOOK if MATH_NOTEBOOK in pages else pages[0]
    visit.page.goto(f"{base}/{page}", wait_until="networkidle")
    link = visit.page.locator('a[href$=".ipynb"]').first
    response = visit.page.request.get(link.evaluate("a => a.href"))
    assert response.ok, response.status
    notebook = nbformat.reads(response.text(), as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and sum(bool(c.outputs) for c in code) >= len(code) // 2, "the download holds no outputs"
    visit.check_stayed_local()


def test_search_snippets_show_the_matching_text(server, visit):
    base, _ = server
    visit.page.goto(f"{base}/search.html?q=dual+clip", wait_until="networkidle")
    visit.page.wait_for_selector("#search-results ul.search li p.context", timeout=30_000)
    snippets = visit.page.eval_on_selector_all(
        "#search-results ul.search li p.context", "els => els.map(e => e.textContent)"
    )
    assert not any("Light Dark" in s for s in snippets), snippets[:3]
    assert sum("clip" in s.lower() for s in snippets) >= len(snippets) // 2, snippets[:3]
    visit.check_stayed_local()


def test_search_scripts_load_only_on_the_search_page(server):
    _, html = server
    for page in site_pages(html):
        if page == "search.html":
            continue
        text = (html / page).read_text("utf-8")
        for script in ("searchindex.js", "searchtools.js", "fontawesome.js"):
            assert script not in text, f"{page} loads {script}"


def test_one_search_field_on_a_wide_screen_and_a_search_button_on_a_phone(server, visit):
    base, _ = server
    visible = """sel => [...document.querySelectorAll(sel)].filter(e => {
        const r = e.getBoundingClientRect(), s = getComputedStyle(e);
        return r.width > 0 && r.height > 0 && s.visibility !== 'hidden';
    }).length"""
    visit.page.set_viewport_size(DESKTOP)
    visit.page.goto(f"{base}/{GRPO_PAGE}", wait_until="load")
    assert visit.page.evaluate(visible, "button.search-button-field") == 1
    visit.page.set_viewport_size(PHONE)
    visit.page.goto(f"{base}/{GRPO_PAGE}", wait_until="load")
    assert visit.page.evaluate(visible, "button.search-button-field") == 0
    assert visit.page.evaluate(visible, "button.search-button") >= 1  # the article bar's magnifier
    visit.check_stayed_local()
