"""Load the built site in headless Chromium with everything outside localhost blocked.

Reuses the session's site build (tests/test_site_build.py). Needs Debian's chromium at
/usr/bin/chromium (``nox -s tests`` installs it when missing) and the ``playwright`` package;
Playwright's own browser download is not used.
"""

from __future__ import annotations

import functools
import http.server
import os
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
    with_math = [p for p in pages if p.exists() and "tex-svg-full.js" in p.read_text(encoding="utf-8")]
    assert with_math, "no notebook page with math was built"
    page = with_math[0].relative_to(html).as_posix()
    visit.page.goto(f"{base}/{page}", wait_until="networkidle")
    visit.page.wait_for_selector("mjx-container svg", timeout=30_000)  # MathJax typeset from _static/
    assert visit.page.locator("mjx-container svg").count() > 0
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
