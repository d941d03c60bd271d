"""Sessions a contributor needs: ``nox -l`` lists them.

- ``docs``: build the whole site, executing every notebook (cached), warnings as errors.
- ``tests``: the full test suite (parity, properties, notebooks, build, browser, lint).
- ``lint``: ruff on code and notebook code cells, codespell on prose.
- ``docs-live``: rebuild and reload the site on every save (sphinx-autobuild).
- ``linkcheck``: check external links (needs the network).
- ``notebooks-gpu``: run every notebook at full scale on a CUDA machine and store the outputs.
- ``benchmark-build``: time a cold build, a no-change rebuild and a one-page edit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "_build"
HTML = BUILD / "html"
SPHINX_FLAGS = ["-W", "-n", "--keep-going", "-c", str(ROOT)]

nox.options.sessions = ["docs", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def install(session: nox.Session, *extras: str) -> None:
    """Install the project (torch pinned to the CPU build here) with the given extras."""
    session.install("-e", f".[{','.join(extras)}]" if extras else ".")


def ensure_chromium(session: nox.Session) -> None:
    """The browser tests drive Debian's Chromium; install it with apt when missing and root."""
    if shutil.which("chromium"):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "chromium", external=True)
    else:
        session.error("the browser tests need Debian's chromium: run `sudo apt-get install chromium` first")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the site into _build/html, executing every notebook (unchanged ones come from the cache)."""
    install(session, "docs", "lab")
    session.run("sphinx-build", *SPHINX_FLAGS, "-b", "html", "docs", str(HTML), *session.posargs)
    session.log(f"Site built: {HTML / 'index.html'}")
    session.log(f"Serve it with: python -m http.server --directory {HTML.relative_to(ROOT)} 8000")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite: parity, properties, notebooks, site build, browser, lint."""
    install(session, "docs", "lab", "test", "lint")
    ensure_chromium(session)
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on Python and on notebooks' code cells, codespell on prose."""
    install(session, "docs", "test", "lint")
    session.run("pytest", "tests/test_lint.py", *session.posargs)


@nox.session(name="docs-live")
def docs_live(session: nox.Session) -> None:
    """Serve the site on localhost and rebuild on every save."""
    install(session, "docs", "lab")
    session.install("sphinx-autobuild")
    session.run(
        "sphinx-autobuild", "-c", str(ROOT), "docs", str(HTML), "--watch", "examples",
        "--ignore", "*.ipynb_checkpoints*", *session.posargs,
    )


@nox.session
def linkcheck(session: nox.Session) -> None:
    """Check external links (needs the network; not part of CI)."""
    install(session, "docs", "lab")
    session.run(
        "sphinx-build", "-c", str(ROOT), "-b", "linkcheck", "-D", "nb_execution_mode=off",
        "docs", str(BUILD / "linkcheck"),
    )
