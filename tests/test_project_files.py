"""The files a contributor expects next to the code: GitHub workflows, templates, license, pre-commit.

check-jsonschema validates every workflow and issue form against GitHub's published schemas (the
``lint`` extra installs it; the schemas ship inside it, so no network is needed); the rest checks
what the workflows
must do: pull requests run lint, tests and robustness on hosted CPU runners, and the GPU workflow only
refreshes stored outputs, on request, through a reviewed pull request.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / ".github"
WORKFLOWS = GITHUB / "workflows"
CI = WORKFLOWS / "ci.yml"
GPU = WORKFLOWS / "gpu-outputs.yml"
LOCK = ROOT / "constraints.txt"

PROJECT_FILES = [
    "LICENSE",
    ".pre-commit-config.yaml",
    ".github/PULL_REQUEST_TEMPLATE.md",
    ".github/CODEOWNERS",
    ".github/ISSUE_TEMPLATE/config.yml",
    ".github/ISSUE_TEMPLATE/content-error.yml",
    ".github/ISSUE_TEMPLATE/broken-notebook.yml",
    ".github/workflows/ci.yml",
    ".github/workflows/gpu-outputs.yml",
]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def triggers(workflow: dict) -> dict:
    """The ``on:`` mapping (YAML 1.1 reads the bare key ``on`` as True)."""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def job_commands(job: dict) -> str:
    """Every ``run:`` script of a job, joined."""
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


def job_actions(job: dict) -> list[str]:
    return [step["uses"] for step in job.get("steps", []) if "uses" in step]


def runs_nox(commands: str, session: str) -> bool:
    return re.search(rf"\bnox\b(\s+-\S+)*\s+-s\s+{re.escape(session)}(\s|$)", commands) is not None


def check_jsonschema() -> str:
    """check-jsonschema from the ``lint`` extra: next to this Python (a venv), else on PATH."""
    local = Path(sys.executable).parent / "check-jsonschema"
    found = str(local) if local.exists() else shutil.which("check-jsonschema")
    if found is None:
        pytest.fail(
            "check-jsonschema is not installed: install the 'lint' extra "
            "(pip install -c constraints.txt -e '.[lint]'; nox -s tests and nox -s lint do)"
        )
    return found


def validate(schema: str, *files: Path) -> subprocess.CompletedProcess:
    cmd = [check_jsonschema(), "--builtin-schema", schema, *map(str, files)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


# -- the workflows ------------------------------------------------------------------------------


def test_every_workflow_and_issue_form_is_valid():
    workflows = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert workflows, f"no workflow in {WORKFLOWS}"
    proc = validate("vendor.github-workflows", *workflows)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    forms = [f for f in sorted((GITHUB / "ISSUE_TEMPLATE").glob("*.yml")) if f.name != "config.yml"]
    assert forms
    proc = validate("vendor.github-issue-forms", *forms)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz:\n      - run: echo hi\n",
        encoding="utf-8",
    )
    proc = validate("vendor.github-workflows", bad)
    assert proc.returncode == 1 and "stepz" in proc.stdout, proc.stdout + proc.stderr


def test_ci_runs_lint_tests_and_robustness_on_every_pull_request():
    ci = load(CI)
    on = triggers(ci)
    assert "pull_request" in on, f"{CI.name} must run on pull_request: {sorted(on)}"
    assert "push" in on and on["push"] and "main" in on["push"].get("branches", [])
    assert "merge_group" in on
    jobs = ci["jobs"]
    commands = {name: job_commands(job) for name, job in jobs.items()}
    for session in ("lint", "tests", "robustness"):
        found = any(runs_nox(c, session) for c in commands.values())
        assert found, f"no job in {CI.name} runs nox -s {session}"
    # tests before robustness, in the same job (robustness needs the suite's environment checks first)
    build = next(name for name, c in commands.items() if runs_nox(c, "tests"))
    assert runs_nox(commands[build], "robustness")
    assert commands[build].index("-s tests") < commands[build].index("-s robustness")
    # installs nox the way the README does
    readme_install = "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt nox"
    assert readme_install in (ROOT / "README.md").read_text(encoding="utf-8")
    for name, c in commands.items():
        if "nox" in c:
            assert readme_install in c, f"job {name} installs nox differently from the README"


def test_ci_runs_on_hosted_runners_with_least_privilege_and_limits():
    ci = load(CI)
    assert ci["permissions"] == {"contents": "read"}
    assert ci["concurrency"]["cancel-in-progress"], "a new push to a pull request must cancel the old run"
    for name, job in ci["jobs"].items():
        labels = job["runs-on"] if isinstance(job["runs-on"], list) else [job["runs-on"]]
        assert "self-hosted" not in labels and "gpu" not in labels, f"job {name} must run on a hosted runner"
        assert "timeout-minutes" in job, f"job {name} has no timeout-minutes"
        for key in job.get("permissions", {}):
            assert key in {"pages", "id-token", "contents"}, f"job {name} asks for {key}"


def test_ci_caches_the_execution_cache_from_main_only_and_uploads_the_site():
    ci = load(CI)
    steps = [s for job in ci["jobs"].values() for s in job.get("steps", [])]
    restore = [s for s in steps if s.get("uses", "").startswith("actions/cache/restore@")]
    save = [s for s in steps if s.get("uses", "").startswith("actions/cache/save@")]
    assert restore and restore[0]["with"]["path"] == "_build/.jupyter_cache"
    key = restore[0]["with"]["key"]
    for part in ("constraints.txt", "examples/**", "docs/**/*.md", "docs/_ext/**"):
        assert part in key, f"the execution cache key does not hash {part}"
    assert restore[0]["with"].get("restore-keys"), "no fallback to main's latest cache"
    assert save and save[0]["with"]["key"] == key
    assert "github.event_name == 'push'" in save[0]["if"] and "refs/heads/main" in save[0]["if"]
    pip = [s for s in steps if s.get("uses", "").startswith("actions/cache@") and "pip" in s["with"]["path"]]
    assert all(s["with"]["path"] == "~/.cache/pip" for s in pip)
    assert pip and all("constraints.txt" in s["with"]["key"] for s in pip)
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert any(s["with"]["path"] == "_build/html" for s in uploads), "the built site is not uploaded"
    docs = next(job for job in ci["jobs"].values() if runs_nox(job_commands(job), "docs"))
    assert "-R -s docs" in job_commands(docs), "the site for review is built from the warm cache (-R)"


def test_the_site_is_published_from_main_only_after_the_checks():
    publishing = {}
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for name, job in load(path)["jobs"].items():
            if any(a.startswith("actions/deploy-pages@") for a in job_actions(job)):
                publishing[f"{path.name}:{name}"] = job
    assert list(publishing) == ["ci.yml:pages"], f"jobs that publish: {list(publishing)}"
    job = publishing["ci.yml:pages"]
    assert "refs/heads/main" in job["if"] and "push" in job["if"]
    assert set(job["needs"]) >= {"lint", "build-test"}
    assert job["permissions"] == {"pages": "write", "id-token": "write"}


def test_gpu_workflow_only_refreshes_stored_outputs_on_request():
    gpu = load(GPU)
    assert set(triggers(gpu)) == {"workflow_dispatch"}, "the GPU workflow runs on request only"
    assert not (WORKFLOWS / "docs.yml").exists(), "docs.yml was replaced by gpu-outputs.yml and ci.yml"
    (job,) = gpu["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "linux", "gpu"]
    commands = job_commands(job)
    assert runs_nox(commands, "notebooks-gpu")
    for session in ("tests", "docs", "robustness"):
        assert not runs_nox(commands, session), f"the GPU runner must not run nox -s {session}"
    actions = job_actions(job)
    assert not [a for a in actions if "pages" in a], "the GPU workflow must not publish"
    assert "gh pr" not in commands and "git push" not in commands
    (pr,) = [a for a in actions if a.startswith("peter-evans/create-pull-request@")]
    assert re.fullmatch(r"peter-evans/create-pull-request@v\d+", pr), f"pin a major version: {pr}"
    step = next(s for s in job["steps"] if s.get("uses") == pr)
    assert step["with"]["add-paths"].startswith("examples/gpu-runs")
    assert step["with"]["signoff"] is True, "the commit it opens carries a DCO sign-off"


def test_every_action_is_pinned_to_a_version():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for name, job in load(path)["jobs"].items():
            for action in job_actions(job):
                assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", action), f"{path.name}:{name}: {action}"


def test_each_workflow_says_what_it_needs():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        header = path.read_text(encoding="utf-8").split("\nname:", 1)[0]
        assert "Runner" in header and "settings" in header, f"{path.name} does not document its needs"
    assert "Allow GitHub Actions to create and approve pull requests" in GPU.read_text(encoding="utf-8")
    assert '"GitHub Actions"' in CI.read_text(encoding="utf-8")  # Pages source


# -- the project files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROJECT_FILES)
def test_project_file_exists(name):
    path = ROOT / name
    assert path.is_file() and path.stat().st_size > 0, f"{name} is missing"


def test_license_is_apache_2_like_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    license_ = pyproject["project"]["license"]
    declared = license_ if isinstance(license_, str) else license_.get("text")
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    for phrase in (
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
        "http://www.apache.org/licenses/LICENSE-2.0",
    ):
        assert phrase in text, f"LICENSE lacks {phrase!r}: not the full Apache-2.0 text"


def test_pull_request_template_has_the_checklist():
    text = (GITHUB / "PULL_REQUEST_TEMPLATE.md").read_text(encoding="utf-8")
    items = [line for line in text.splitlines() if line.startswith("- [ ]")]
    assert len(items) >= 6
    needles = ("budget", "glue", "path:line", "formula", "nox -s tests", "nox -s robustness", "Signed-off-by")
    for needle in needles:
        assert any(needle in item for item in items), f"no checklist item about {needle!r}"


def test_codeowners_names_an_owner_for_each_section():
    lines = [
        line.split()
        for line in (GITHUB / "CODEOWNERS").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    owners = {parts[0]: parts[1:] for parts in lines}
    assert owners.get("*"), "no default owner"
    sections = sorted(
        p.name for p in (ROOT / "docs").iterdir() if (p / "index.md").is_file() and not p.name.startswith("_")
    )
    assert sections
    for section in sections:
        for path in (f"/docs/{section}/", f"/examples/{section}/"):
            assert owners.get(path), f"CODEOWNERS names no owner for {path}"
    for handles in owners.values():
        assert all(re.fullmatch(r"@[\w.-]+(/[\w.-]+)?", h) for h in handles), handles


def test_issue_forms_are_valid():
    config = load(GITHUB / "ISSUE_TEMPLATE" / "config.yml")
    assert isinstance(config["blank_issues_enabled"], bool)
    for link in config.get("contact_links", []):
        assert {"name", "url", "about"} <= set(link)
    for name in ("content-error.yml", "broken-notebook.yml"):
        form = load(GITHUB / "ISSUE_TEMPLATE" / name)
        assert form["name"] and form["description"], name
        ids = [item["id"] for item in form["body"] if "id" in item]
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        kinds = {"markdown", "input", "textarea", "dropdown", "checkboxes"}
        for item in form["body"]:
            assert item["type"] in kinds, f"{name}: unknown type {item['type']}"
            assert "attributes" in item, name
            if item["type"] != "markdown":
                assert item["attributes"].get("label"), f"{name}: {item.get('id')} has no label"
            if item["type"] == "dropdown":
                assert item["attributes"].get("options"), f"{name}: {item['id']} has no options"
        assert any(item.get("validations", {}).get("required") for item in form["body"]), name


def test_pre_commit_hooks_match_the_lock():
    config = load(ROOT / ".pre-commit-config.yaml")
    lock = LOCK.read_text(encoding="utf-8")
    revs = {repo["repo"]: repo.get("rev") for repo in config["repos"]}
    for package, repo in (
        ("ruff", "https://github.com/astral-sh/ruff-pre-commit"),
        ("codespell", "https://github.com/codespell-project/codespell"),
    ):
        pinned = re.search(rf"^{package}==(\S+)\s*$", lock, re.M)
        assert pinned, f"constraints.txt pins no {package}"
        rev = revs.get(repo)
        assert rev == f"v{pinned.group(1)}", f"{repo} at {rev}, the lock pins {package}=={pinned.group(1)}"
    local = [hook for repo in config["repos"] if repo["repo"] == "local" for hook in repo["hooks"]]
    assert any("tests/test_lint.py" in hook["entry"] for hook in local), "no hook runs the notebook lint"
