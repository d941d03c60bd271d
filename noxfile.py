"""Sessions a contributor needs: ``nox -l`` lists them.

- ``docs``: build the whole site, executing every notebook (cached), warnings as errors.
- ``tests``: the full test suite (parity, properties, notebooks, build, browser, lint).
- ``robustness``: run every notebook under another block of seeds and another CPU instruction set.
- ``lint``: ruff on code and notebook code cells, codespell on prose (installs only the linters).
- ``lock``: refresh constraints.txt, the lock every session installs from.
- ``docs-live``: rebuild and reload the site on every save (sphinx-autobuild).
- ``linkcheck``: check external links (needs the network).
- ``notebooks-gpu``: run every notebook at full scale on a CUDA machine and store the outputs.
- ``gpu-bundle``: download the wheels the offline one-GPU run (examples/gpu-runs/run.sh) installs.
- ``benchmark-build``: time a cold build, a no-change rebuild and a one-page edit.
- ``lighthouse``: Lighthouse scores, blocking time and bytes of three pages behind a gzip server.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nox
import nox.command

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "_build"
HTML = BUILD / "html"
DATA = ROOT / "docs" / "_data"  # measured figures the pages include (nox -s lighthouse writes them)
LOCK = ROOT / "constraints.txt"
# PyTorch's index of CPU-only builds; RLREF_TORCH_INDEX points elsewhere (a mirror, say).
TORCH_CPU_INDEX = os.environ.get("RLREF_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
# -j auto: parallel read, so notebooks that are not in the cache execute in parallel.
SPHINX_FLAGS = ["-W", "-n", "--keep-going", "-j", "auto", "-c", str(ROOT)]

nox.options.sessions = ["docs", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def locked_version(package: str) -> str:
    """The version constraints.txt pins for ``package`` (one line ``package==X`` without markers)."""
    match = re.search(rf"^{re.escape(package)}==([^\s;]+)\s*$", LOCK.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise RuntimeError(f"{LOCK.name} pins no single version of {package}: run `nox -s lock`")
    return match.group(1)


def install(session: nox.Session, *extras: str, cpu_torch: bool = True) -> None:
    """Install the project with the given extras, every package at its version in constraints.txt.

    On Linux, torch comes first as the CPU build of the locked version, from PyTorch's CPU index:
    PyPI's Linux wheel is the CUDA build, with several GB of CUDA libraries a CPU build never uses.
    """
    if cpu_torch and sys.platform == "linux":
        session.install("--no-deps", f"torch=={locked_version('torch')}+cpu", "--index-url", TORCH_CPU_INDEX)
    session.install("-c", str(LOCK), "-e", f".[{','.join(extras)}]" if extras else ".")


def ensure_packages(session: nox.Session, *commands: str, required: bool = True) -> None:
    """Install Debian's packages for missing commands (chromium for the browser tests, node for KaTeX).

    Without root or apt: an error if ``required``, else a warning.
    """
    packages = {"chromium": "chromium", "node": "nodejs"}
    missing = [packages[c] for c in commands if shutil.which(c) is None]
    if not missing:
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", *missing, external=True)
    elif required:
        session.error(f"install {' '.join(missing)} first (Debian: sudo apt-get install {' '.join(missing)})")
    else:
        session.warn(f"{' '.join(missing)} not found: math will be typeset in the browser, not at build time")


def sphinx_build(session: nox.Session, *args: str, **kwargs) -> None:
    """sphinx-build with the site's flags; a failed notebook's report (cell, line, traceback) comes last."""
    try:
        session.run("sphinx-build", *SPHINX_FLAGS, *args, **kwargs)
    except nox.command.CommandFailed:
        out = Path(args[args.index("-b") + 3]) if "-b" in args else HTML
        reports = sorted((out / ".doctrees" / "notebook-failures").glob("*.txt"))
        if reports:
            text = "\n".join(r.read_text(encoding="utf-8") for r in reports)
            session.error(f"{len(reports)} notebook(s) failed:\n\n{text}")
        raise


@nox.session
def docs(session: nox.Session) -> None:
    """Build the site into _build/html, executing every notebook (unchanged ones come from the cache)."""
    install(session, "docs", "lab")
    ensure_packages(session, "node", required=False)  # KaTeX prerenders the math at build time
    sphinx_build(session, "-b", "html", "docs", str(HTML), *session.posargs)
    session.log(f"Site built: {HTML / 'index.html'}")
    session.log(f"Serve it with: python3 -m http.server --directory {HTML.relative_to(ROOT)} 8000")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite: parity, properties, notebooks, site build, browser, lint."""
    install(session, "docs", "lab", "test", "lint")
    ensure_packages(session, "chromium", "node")
    session.run("pytest", *(session.posargs or ["tests", "--durations=20"]))  # the slowest tests, last


@nox.session
def robustness(session: nox.Session) -> None:
    """Run every executable document under another block of seeds and another CPU instruction set.

    Every assertion stays on: a conclusion a page draws must hold here too. Pass paths to run only
    those documents (``nox -s robustness -- examples/training/training-stability.md``).
    """
    install(session, "docs", "lab")
    session.run("python", "tests/notebook_runner.py", "--robustness", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on code and notebook cells, codespell on prose, schemas of the GitHub files: only the linters."""
    session.install("-c", str(LOCK), "ruff", "codespell", "check-jsonschema", "pyyaml", "pytest")
    tests = ["tests/test_lint.py", "tests/test_project_files.py"]
    session.run("pytest", "-p", "no:cacheprovider", *tests, *session.posargs)


@nox.session
def lock(session: nox.Session) -> None:
    """Refresh constraints.txt from pyproject.toml (newest releases; torch stays at its pin).

    ``nox -s lock -- --torch 2.14.0`` moves torch. Commit the new file with what it changed.
    """
    session.install("uv")
    args = list(session.posargs)
    torch = args[args.index("--torch") + 1] if "--torch" in args else locked_version("torch")
    with tempfile.TemporaryDirectory() as tmp:
        pin = Path(tmp) / "torch.txt"
        pin.write_text(f"torch=={torch}\n", encoding="utf-8")
        session.run(
            "uv", "pip", "compile", "pyproject.toml", "--all-extras", "--universal", "--python-version",
            "3.11", "--constraint", str(pin), "--no-header", "--quiet", "-o", str(LOCK),
        )
    text = LOCK.read_text(encoding="utf-8")
    LOCK.write_text(LOCK_HEADER + text, encoding="utf-8")
    session.log(f"{LOCK.name}: {text.count('==')} pins, torch {torch}")


LOCK_HEADER = """\
# The lock: every package every nox session installs, at one version (pip install -c constraints.txt).
# Made by `nox -s lock` (uv pip compile pyproject.toml --all-extras --universal); do not edit by hand.
# On Linux nox installs torch's CPU build of the version below first (noxfile.py, install()).
"""


@nox.session(name="docs-live")
def docs_live(session: nox.Session) -> None:
    """Serve the site on localhost and rebuild on every save."""
    install(session, "docs", "lab", "dev")
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


@nox.session(name="notebooks-gpu")
def notebooks_gpu(session: nox.Session) -> None:
    """On a CUDA machine with network: the one-GPU run of examples/gpu-runs/run.py in a nox venv.

    Runs the notebooks that hold GPU rows (or those passed) at full scale, each with its own time
    budget, all of them even when one fails, plus the NVML + profiler smoke check; stores
    examples/gpu-runs/<section>/<slug>.ipynb and .json (device, driver, CUDA, torch, date, commit,
    sha256 of the source, seconds, GPU count, SM clock, power limit, MIG/ECC). Install the CUDA build of
    the pinned torch first, e.g. ``nox -s notebooks-gpu -- --torch-index https://download.pytorch.org/whl/cu128``.
    On an offline machine with torch installed, use examples/gpu-runs/run.sh instead.
    """
    if shutil.which("nvidia-smi") is None:
        session.error("notebooks-gpu needs a CUDA machine: nvidia-smi is not on PATH")
    args = list(session.posargs)
    if "--torch-index" in args:
        i = args.index("--torch-index")
        session.install(f"torch=={locked_version('torch')}", "--index-url", args[i + 1])
        del args[i : i + 2]
    install(session, "docs", "lab", cpu_torch=False)
    session.install("nvidia-ml-py>=12")  # NVML, behind torch.cuda.utilization() (monitoring page)
    session.run("python", "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else "
                "'notebooks-gpu needs a CUDA device: torch.cuda.is_available() is False')")
    session.run("python", "examples/gpu-runs/run.py", *args, env={"RLREF_SCALE": "full"})
    session.log("Stored outputs under examples/gpu-runs/; commit them with the notebooks they belong to.")


@nox.session(name="gpu-bundle", python=False)
def gpu_bundle(session: nox.Session) -> None:
    """Download into examples/gpu-runs/wheels/ what examples/gpu-runs/run.sh installs on an offline GPU box.

    CPython 3.12, manylinux x86-64, binary wheels at the versions of constraints.txt: nbclient,
    ipykernel and myst-nb's reader with their dependencies (never torch); at most 64 MiB (asserted).
    Needs network. ``-- --current`` builds it for this interpreter instead; ``-- DIR`` writes elsewhere.
    """
    args = list(session.posargs)
    dest = next((a for a in args if not a.startswith("-")), str(ROOT / "examples" / "gpu-runs" / "wheels"))
    extra = [a for a in args if a.startswith("-")]
    session.run(sys.executable, "examples/gpu-runs/bundle.py", dest, *extra, external=True)
    session.log("Copy the folder with the checkout to the GPU machine; run examples/gpu-runs/run.sh there.")


@nox.session(name="benchmark-build")
def benchmark_build(session: nox.Session) -> None:
    """Time a cold build (empty execution cache), a no-change rebuild and a one-page edit.

    Also prints each notebook's execution time from jupyter-cache's records. Not a timed test:
    the figures go into docs/contributing.md with the date and machine.
    """
    install(session, "docs", "lab")
    out = BUILD / "benchmark"
    cache = out / ".jupyter_cache"
    shutil.rmtree(out, ignore_errors=True)
    env = {"NB_EXECUTION_CACHE_PATH": str(cache)}
    build = ["sphinx-build", *SPHINX_FLAGS, "-q", "-b", "html", "docs", str(out / "html")]
    figures = {}

    def timed(label: str) -> None:
        start = time.perf_counter()
        # time the build even when a page in progress warns (exit 1: the warnings are in the log above);
        # a crash (exit 2) still stops here
        session.run(*build, env=env, success_codes=[0, 1])
        figures[label] = time.perf_counter() - start

    timed("cold build (empty cache, every notebook executes)")
    timed("no-change rebuild")
    page = ROOT / "docs" / "contributing.md"
    original = page.read_text(encoding="utf-8")
    try:
        page.write_text(original + "\n<!-- benchmark edit -->\n", encoding="utf-8")
        timed("rebuild after editing one page")
    finally:
        page.write_text(original, encoding="utf-8")
    session.run(
        "python", "-c",
        "import sys; from jupyter_cache import get_cache\n"
        "for r in sorted(get_cache(sys.argv[1]).list_cache_records(), key=lambda r: r.uri):\n"
        "    print(f\"{r.data.get('execution_seconds', float('nan')):7.1f} s  {r.uri}\")",
        str(cache),
    )
    session.log(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    for label, seconds in figures.items():
        session.log(f"{seconds:7.1f} s  {label}")


LIGHTHOUSE = "12.8.2"  # npm; 13.x wants Node 22
LIGHTHOUSE_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
    "--disable-sync --no-first-run"
)


@nox.session(python=False)
def lighthouse(session: nox.Session) -> None:
    """Lighthouse (npm, pinned) on grpo-theory, the heaviest notebook page and the landing page.

    Measures a built site (default _build/html: run ``nox -s docs`` first; or ``-- path/to/html``)
    behind a local server that gzips text as a web host would, mobile and desktop presets, with
    Debian's Chromium (/usr/bin/chromium, or $CHROME_PATH). Needs node and npm. Prints performance,
    total blocking time, transferred bytes, accessibility, best practices and SEO; the reports stay
    in _build/lighthouse/. Targets (issue 14): mobile performance >= 90, TBT <= 300 ms, <= 1.0 MB;
    desktop performance >= 98; accessibility, best practices and SEO 100.

    Lighthouse's score moves from run to run (its simulated throttling scales the CPU time it
    observes), so each page and preset runs ``--runs=N`` times (default 5) and the run with the
    median performance score is reported, as Lighthouse's own guidance on variability advises.
    """
    import csv
    import datetime
    import functools
    import gzip
    import http.server
    import io
    import json
    import threading

    runs = [a for a in session.posargs if a.startswith("--runs=")]
    n_runs = int(runs[-1].split("=", 1)[1]) if runs else 5
    if n_runs < 1 or n_runs % 2 == 0:
        session.error(f"--runs must be a positive odd number (a median run), got {n_runs}")
    folders = [a for a in session.posargs if not a.startswith("--")]
    html = Path(folders[0]).resolve() if folders else HTML
    if not (html / "index.html").exists():
        session.error(f"no built site in {html}: run `nox -s docs` first (or pass the html folder)")
    chrome = os.environ.get("CHROME_PATH", "/usr/bin/chromium")
    if not Path(chrome).exists() or shutil.which("npm") is None:
        session.error(f"lighthouse needs npm and Chromium at {chrome} (apt-get install nodejs npm chromium)")
    tool = BUILD / "lighthouse" / "tool"
    cli = tool / "node_modules" / "lighthouse" / "cli" / "index.js"
    if not cli.exists() or json.loads((cli.parents[1] / "package.json").read_text())["version"] != LIGHTHOUSE:
        tool.mkdir(parents=True, exist_ok=True)
        session.run("npm", "install", "--prefix", str(tool), "--no-save", "--no-audit", "--no-fund",
                    "-E", f"lighthouse@{LIGHTHOUSE}", external=True)

    def weight(page: Path) -> int:  # the page's HTML plus the images it shows
        text = page.read_text(encoding="utf-8")
        images = {(page.parent / src).resolve() for src in re.findall(r'<img[^>]+src="([^"]+)"', text)}
        return len(text.encode()) + sum(i.stat().st_size for i in images if i.is_file())

    notebooks = [p for p in (html / "examples").rglob("*.html") if 'class="cell docutils container"' in
                 p.read_text(encoding="utf-8")]
    heaviest = max(notebooks, key=weight).relative_to(html).as_posix() if notebooks else None
    pages = [p for p in ("theory/grpo-theory.html", heaviest, "index.html") if p]

    class Gzip(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_head(self):
            path = Path(self.translate_path(self.path))
            compressible = path.suffix in {".html", ".css", ".js", ".svg", ".json", ".ipynb", ".txt", ".map"}
            if not (path.is_file() and compressible and "gzip" in self.headers.get("Accept-Encoding", "")):
                return super().send_head()
            body = gzip.compress(path.read_bytes(), 6)
            self.send_response(200)
            self.send_header("Content-Type", self.guess_type(str(path)))
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Gzip, directory=str(html)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    out = BUILD / "lighthouse"
    rows = []
    try:
        for page in pages:
            for preset in ("mobile", "desktop"):
                report = out / f"{page.replace('/', '_').removesuffix('.html')}.{preset}.json"
                trials = []
                for trial in range(n_runs):
                    path = report.with_suffix(f".run{trial}.json")
                    cmd = ["node", str(cli), f"{base}/{page}", "--quiet", "--output=json",
                           f"--output-path={path}", f"--chrome-flags={LIGHTHOUSE_FLAGS}",
                           "--only-categories=performance,accessibility,best-practices,seo"]
                    if preset == "desktop":
                        cmd.append("--preset=desktop")
                    session.run(*cmd, external=True, env={"CHROME_PATH": chrome})
                    trials.append(json.loads(path.read_text(encoding="utf-8")))
                    path.unlink()
                trials.sort(key=lambda d: d["categories"]["performance"]["score"])
                data = trials[n_runs // 2]  # the median run by performance score
                report.write_text(json.dumps(data), encoding="utf-8")
                scores = [round(100 * d["categories"]["performance"]["score"]) for d in trials]
                session.log(f"{page} {preset}: performance over {n_runs} runs {scores}, "
                            f"median {scores[n_runs // 2]}")
                cat, audits = data["categories"], data["audits"]
                rows.append((page, preset, *(round(100 * cat[c]["score"]) for c in
                             ("performance", "accessibility", "best-practices", "seo")),
                             audits["total-blocking-time"]["numericValue"],
                             audits["total-byte-weight"]["numericValue"] / 1e6))
    finally:
        httpd.shutdown()
    chromium = subprocess.run([chrome, "--version"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    provenance = {"date": datetime.date.today().isoformat(), "lighthouse": LIGHTHOUSE, "browser": chromium,
                  "machine": f"{cpu}, {os.cpu_count()} cores, {platform.platform()}",
                  "runs per page and preset": f"{n_runs} (the median run by performance score)",
                  "load average at the end (1 min)": f"{os.getloadavg()[0]:.1f}",
                  "server": "local, gzip level 6 on text files"}
    # The contributor guide shows these files (docs/contributing.md): commit them after a run.
    DATA.mkdir(exist_ok=True)
    with (DATA / "lighthouse.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["page", "preset", "performance", "accessibility", "best practices", "SEO",
                    "total blocking time (ms)", "transferred (MB)"])
        w.writerows([(p, pr, perf, a, b, seo, f"{tbt:.0f}", f"{mb:.2f}")
                     for p, pr, perf, a, b, seo, tbt, mb in rows])
    with (DATA / "lighthouse-run.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(provenance.items())
    session.log(f"Lighthouse {LIGHTHOUSE}, {provenance['date']}, {provenance['machine']}, {chromium}, "
                f"gzip server, site {html}; wrote {DATA / 'lighthouse.csv'}")
    header = f"{'page':<42} {'preset':<8} {'perf':>4} {'a11y':>4} {'bp':>4} {'seo':>4}"
    header += f" {'TBT ms':>7} {'MB':>6}"
    session.log(header)
    for page, preset, perf, a11y, bp, seo, tbt, mb in rows:
        session.log(f"{page:<42} {preset:<8} {perf:>4} {a11y:>4} {bp:>4} {seo:>4} {tbt:>7.0f} {mb:>6.2f}")
