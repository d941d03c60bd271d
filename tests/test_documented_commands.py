"""Every command in README.md and docs/contributing.md is exercised, by CI or by a test here.

The commands are extracted from the two files (``bash`` blocks, and inline code that starts with
``python3``, ``nox``, ``.venv/bin/`` or ``.nox/``). Each must match one entry of ``EXERCISED``: either
``.ci/run`` runs it verbatim, or a test below runs it (placeholders such as ``<section>/<slug>``
filled with a real notebook). A command added to the guide without an entry fails this test.
"""

from __future__ import annotations

import importlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_site_build import build_site

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "README.md", ROOT / "docs" / "contributing.md"]
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
NOTEBOOK = "examples/theory/grpo-corrections.md"  # a small notebook for the placeholder paths
PAGE = "docs/theory/grpo-theory.md"
_PREFIX = re.compile(r"^(python3 |nox |\.venv/bin/|\.nox/)")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every command the README and the contributor guide show."""
    found = []
    for path in GUIDES:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
            for line in block.splitlines():
                command = line.split("  #")[0].split(" # ")[0].strip()
                if command and not command.startswith("#"):
                    found.append((path.name, command))
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            if _PREFIX.match(span) and " " in span and "<session>" not in span:
                found.append((path.name, span.strip()))
    return found


def _ci(command: str) -> None:
    line = command if command.startswith(("python3 -m venv", ".venv/bin/")) else f".venv/bin/{command}"
    assert any(line in ci_line for ci_line in CI.splitlines()), f".ci/run does not run {line!r}"


# command pattern -> how it is exercised ("ci": .ci/run runs it; otherwise the named test below)
_VENV = r"python3 -m venv \.venv && \.venv/bin/pip install -q -c constraints\.txt nox"
_PLACEHOLDER = r"examples/<section>/<slug>\.md"
EXERCISED = {
    _VENV + r"( && \.venv/bin/nox -s (docs|tests))?": "ci",
    r"(\.venv/bin/)?nox -s (docs|tests|robustness|lint)": "ci",
    r"(\.venv/bin/)?nox -l": "test_nox_lists_the_documented_sessions",
    r"\.nox/docs/bin/python tests/notebook_runner\.py " + _PLACEHOLDER:
        "test_notebook_runner_runs_one_notebook",
    r"\.nox/docs/bin/python tests/prose_numbers\.py docs/<section>/<slug>\.md " + _PLACEHOLDER:
        "test_prose_check_of_one_page",
    r"\.venv/bin/nox -R -s robustness -- " + _PLACEHOLDER: "test_robustness_of_one_notebook",
    r"\.venv/bin/nox -R -s tests -- (tests/\S+\.py ?)+": "test_named_test_files_exist",
    r"python3 -m http\.server --directory _build/html 8000": "test_http_server_serves_the_site",
    r"nox -s notebooks-gpu( -- .*)?": "test_notebooks_gpu_refuses_without_cuda",
    # tests in another module are named "module::test" (imported here, they would run twice)
    r"nox -s gpu-bundle": "test_gpu_runs::test_bundle_is_under_64_mib_and_holds_no_torch",
    r"examples/gpu-runs/run\.sh":
        "test_gpu_runs::test_run_sh_installs_the_bundle_offline_and_stores_a_notebook_with_provenance",
}


def _entry(command: str) -> str | None:
    return next((how for pattern, how in EXERCISED.items() if re.fullmatch(pattern, command)), None)


def test_every_documented_command_is_exercised():
    commands = documented_commands()
    assert len(commands) >= 10, commands
    missing = [f"{name}: {cmd}" for name, cmd in commands if _entry(cmd) is None]
    assert not missing, "commands in the guides that no test or CI exercises:\n" + "\n".join(missing)
    for _, cmd in commands:
        how = _entry(cmd)
        if how == "ci":
            _ci(cmd)
        elif "::" in how:
            module, name = how.split("::")
            assert hasattr(importlib.import_module(module), name), f"{cmd!r} names a missing test {how!r}"
        else:
            assert how in globals(), f"{cmd!r} names a test {how!r} that does not exist"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_nox_lists_the_documented_sessions():
    proc = _run(sys.executable, "-m", "nox", "-l")
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^[*-] (\S+) -> ", proc.stdout, re.M))
    table = (ROOT / "docs" / "contributing.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([\w-]+)` \|", table, re.M))
    assert documented == listed, f"sessions: nox lists {sorted(listed)}, the guide {sorted(documented)}"


def test_notebook_runner_runs_one_notebook():
    proc = _run(sys.executable, "tests/notebook_runner.py", NOTEBOOK)
    assert proc.returncode == 0 and f"OK {NOTEBOOK}" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.build
def test_prose_check_of_one_page():
    assert build_site().returncode == 0
    proc = _run(sys.executable, "tests/prose_numbers.py", PAGE, "examples/theory/grpo-theory.md")
    assert proc.returncode == 0 and "0 measured numbers typed into prose" in proc.stdout, proc.stdout


def test_robustness_of_one_notebook():
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    assert '"tests/notebook_runner.py", "--robustness", *session.posargs' in noxfile  # what the session runs
    proc = _run(sys.executable, "tests/notebook_runner.py", "--robustness", NOTEBOOK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("1 passed, 0 failed"), proc.stdout


def test_named_test_files_exist():
    for _, cmd in documented_commands():
        if _entry(cmd) == "test_named_test_files_exist":
            missing = [f for f in re.findall(r"tests/\S+\.py", cmd) if not (ROOT / f).is_file()]
            assert not missing, f"{cmd!r} names missing test files {missing}"


@pytest.mark.build
def test_http_server_serves_the_site():
    site = build_site()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site.html),
         str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as response:
                    assert response.status == 200 and b"NeMo RL Advanced Topics" in response.read()
                    return
            except OSError:
                time.sleep(0.2)
        pytest.fail("python3 -m http.server did not serve the built site")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_notebooks_gpu_refuses_without_cuda():
    """Without a GPU the session stops at once with a clear message (it runs on CUDA machines only)."""
    proc = _run(sys.executable, "-m", "nox", "-s", "notebooks-gpu", "--", NOTEBOOK, timeout=300)
    assert proc.returncode != 0 and "needs a CUDA machine" in proc.stdout + proc.stderr, proc.stderr[-2000:]
