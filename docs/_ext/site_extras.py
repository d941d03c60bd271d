"""Small Sphinx extension for this site: page descriptions, tag pages, stored GPU outputs, and an
execution cache that knows the code a notebook runs.

- ``description`` front matter becomes the page's ``<meta name="description">``.
- ``tags`` front matter is shown under the page title, and ``_tags/`` (generated, git-ignored)
  holds a tags index plus one page per tag listing the pages that carry it.
- ``examples/gpu-runs/<section>/<slug>.ipynb`` (+ ``.json`` provenance), written by
  ``nox -s notebooks-gpu``, render as pages of their own without execution; the CPU notebook
  page links to them with the hardware named, as long as the notebook source is unchanged
  since the GPU run (same sha256). ``stale_gpu_runs`` is what the tests use to catch the rest.
- A notebook's **inputs** are the ``rlref`` modules it imports (with everything they import), the
  scripts it runs, and the lock file (``notebook_inputs``). Their hash is part of the notebook's
  key in the execution cache, and each input is a Sphinx dependency of the notebook and of every
  page that pastes a result from it: change one and exactly those documents re-read and the
  notebook re-executes; a stale output never reaches a page.
- Files a notebook writes for download under ``_generated/<slug>/`` are stored with its cached
  outputs and come back with them.
- After a build that warned, the next build re-reads every document, so a repeated build fails
  again instead of reporting success over the broken pages.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import posixpath
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GPU_RUNS = ROOT / "examples" / "gpu-runs"
RLREF = ROOT / "examples" / "rlref"
LOCK = ROOT / "constraints.txt"  # every package every nox session installs, pinned
GENERATED = "_generated"  # a notebook's downloadable files: <notebook dir>/_generated/<slug>/
DIRTY_MARKER = "site_extras.reread-all"  # in the doctree dir: the last build warned
TAGS_DIR = "_tags"  # under docs/, git-ignored, rewritten only when its content changes

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


# -- Front matter ------------------------------------------------------------------
def front_matter(path: Path) -> dict:
    """The YAML front matter of a MyST file (``{}`` when there is none)."""
    match = _FRONT_MATTER.match(path.read_text(encoding="utf-8"))
    if not match:
        return {}
    data = yaml.safe_load(match.group(1)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: front matter must be a mapping, got {type(data).__name__}")
    return data


def page_tags(data: dict, where: str = "") -> list[str]:
    tags = data.get("tags", [])
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise TypeError(f"{where}: tags must be a list of strings, got {tags!r}")
    return [t.strip().lower() for t in tags]


def tag_slug(tag: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")
    if not slug:
        raise ValueError(f"tag {tag!r} has no letters or digits")
    return slug


def scan_pages(srcdir: Path = DOCS) -> dict[str, dict]:
    """docname -> front matter, for every Markdown page (notebooks through docs/examples)."""
    pages = {}
    for path in sorted(srcdir.rglob("*.md")):
        rel = path.relative_to(srcdir)
        if rel.parts[0] in {"_build", "_static", "_templates", TAGS_DIR} or "rlref" in rel.parts:
            continue
        if rel.name == "README.md":
            continue
        pages[rel.with_suffix("").as_posix()] = front_matter(path)
    return pages


def tag_pages(pages: dict[str, dict]) -> dict[str, str]:
    """File name -> MyST text of the tags index and one page per tag."""
    by_tag: dict[str, list[str]] = {}
    for docname, data in pages.items():
        for tag in page_tags(data, docname):
            by_tag.setdefault(tag, []).append(docname)
    files = {}
    lines = [
        "---",
        "orphan: true",
        "---",
        "",
        "(tags-index)=",
        "# Tags",
        "",
        "Every tag used on this site, with its pages.",
        "",
    ]
    for tag in sorted(by_tag):
        lines.append(f"- {{doc}}`{tag} <{tag_slug(tag)}>` ({len(by_tag[tag])})")
    files["index.md"] = "\n".join(lines) + "\n"
    for tag, docnames in sorted(by_tag.items()):
        body = [
            "---",
            "orphan: true",
            "---",
            "",
            f"(tag-{tag_slug(tag)})=",
            f"# Tag: {tag}",
            "",
            "Pages tagged with this word:",
            "",
        ]
        body += [f"- {{doc}}`/{d}`" for d in sorted(docnames)]
        body += ["", "See {doc}`all tags <index>`."]
        files[f"{tag_slug(tag)}.md"] = "\n".join(body) + "\n"
    return files


def write_tag_pages(srcdir: Path = DOCS) -> Path:
    """(Re)write ``docs/_tags``; untouched files keep their mtime, so no-change rebuilds stay fast.

    Files are replaced atomically and never deleted (a tag page nobody carries any more says so),
    so builds running side by side on one checkout never see a half-written or vanished page.
    """
    out = srcdir / TAGS_DIR
    out.mkdir(exist_ok=True)
    files = tag_pages(scan_pages(srcdir))
    for old in out.glob("*.md"):
        if old.name not in files:
            files[old.name] = (
                "---\norphan: true\n---\n\n# Unused tag\n\nNo page carries this tag any more. "
                "See {ref}`all tags <tags-index>`.\n"
            )
    for name, text in files.items():
        target = out / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
    return out


# -- A notebook's inputs: the code it runs ----------------------------------------------
_IMPORT = re.compile(
    r"^\s*(?:from\s+(rlref(?:\.\w+)*)\s+import\s+([^#\n]+)|import\s+(rlref(?:\.\w+)*))", re.M
)
_SCRIPT = re.compile(r"""["'/]((?:[\w.-]+/)*[\w.-]+\.py)["']""")


def _module_path(module: str, rlref: Path) -> Path | None:
    """The file of an ``rlref`` module (``rlref.lab`` -> ``lab/__init__.py``), None if there is none."""
    parts = module.split(".")[1:]
    base = rlref.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(text: str) -> set[str]:
    """``rlref`` modules that Python source text imports (``from rlref import stats`` -> rlref.stats)."""
    modules = set()
    for match in _IMPORT.finditer(text):
        if match.group(3):
            modules.add(match.group(3))
            continue
        package = match.group(1)
        modules.add(package)
        names = match.group(2).replace("(", " ").replace(")", " ").replace("\\", " ")
        for name in names.split(","):
            name = name.strip().split(" as ")[0].strip()
            if name.isidentifier():
                modules.add(f"{package}.{name}")
    return modules


def _relative_imports(tree, module: str, is_package: bool) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def rlref_closure(text: str, rlref: Path = RLREF) -> list[Path]:
    """Every ``rlref`` file that source ``text`` imports, directly or through other rlref modules."""
    import ast

    todo, seen = sorted(_imported_modules(text)), {}
    while todo:
        module = todo.pop()
        parts = module.split(".")
        # importing rlref.a.b runs rlref/__init__.py and rlref/a/__init__.py first
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in seen)
        path = _module_path(module, rlref)
        if path is None or module in seen:
            continue
        seen[module] = path
        source = path.read_text(encoding="utf-8")
        imported = _imported_modules(source) | _relative_imports(
            ast.parse(source), module, path.name == "__init__.py"
        )
        todo.extend(m for m in imported if m not in seen)
    return sorted(set(seen.values()))


def notebook_inputs(path: Path, rlref: Path = RLREF, lock: Path = LOCK) -> list[Path]:
    """What a notebook's outputs depend on besides its own text: rlref files, scripts it runs, the lock."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", text, flags=re.M | re.S))
    inputs = set(rlref_closure(code, rlref))
    scripts = set(_SCRIPT.findall(code))
    for folder in re.findall(r"sys\.path\.insert\(\s*0\s*,\s*[\"']([^\"']+)[\"']", code):
        scripts |= {f"{folder}/{name}.py" for name in re.findall(r"^\s*(?:from|import)\s+(\w+)", code, re.M)}
    for rel in sorted(scripts):
        script = (path.parent / rel).resolve()
        if script.is_file() and rlref not in script.parents:
            inputs.add(script)
            inputs.update(rlref_closure(script.read_text(encoding="utf-8"), rlref))
    if lock.is_file():
        inputs.add(lock)
    return sorted(inputs)


def inputs_hash(path: Path, rlref: Path = RLREF, lock: Path = LOCK) -> str:
    """sha256 over the contents of ``notebook_inputs(path)``, independent of where the tree lies."""
    digest = hashlib.sha256()
    base = rlref.parent.parent
    for dep in notebook_inputs(path, rlref, lock):
        rel = dep.relative_to(base).as_posix() if dep.is_relative_to(base) else dep.name
        digest.update(rel.encode() + b"\0" + hashlib.sha256(dep.read_bytes()).digest())
    return digest.hexdigest()


def _pasted_from(text: str, docname: str) -> set[str]:
    """Docnames a page pastes glued results from (``{glue:text}`/examples/a/b.md::key:.3f```)."""
    docs = set()
    for ref in re.findall(r"\{glue(?::\w+)?\}`([^`]*?)::", text):
        ref = ref.strip()
        rel = ref.lstrip("/") if ref.startswith("/") else (Path(docname).parent / ref).as_posix()
        docs.add(os.path.normpath(rel).removesuffix(".md").removesuffix(".ipynb"))
    return docs


# -- Stored GPU outputs ---------------------------------------------------------------
@dataclass(frozen=True)
class GpuRun:
    notebook: Path  # examples/<section>/<slug>.md
    ipynb: Path  # examples/gpu-runs/<section>/<slug>.ipynb
    provenance: dict

    @property
    def fresh(self) -> bool:
        return (
            self.provenance.get("source_sha256") == sha256_file(self.notebook)
            if self.notebook.exists()
            else False
        )

    def label(self) -> str:
        p = self.provenance
        return (
            f"{p['device']} (driver {p['driver']}, CUDA {p['cuda']}, torch {p['torch']}), "
            f"run on {p['date']} at scale '{p['scale']}'"
        )


REQUIRED_PROVENANCE = ("source", "source_sha256", "device", "driver", "cuda", "torch", "date", "scale")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gpu_runs(root: Path = ROOT) -> list[GpuRun]:
    """Every stored GPU run under ``root/examples/gpu-runs``; malformed entries raise ValueError."""
    store = root / "examples" / "gpu-runs"
    runs = []
    for meta in sorted(store.glob("*/*.json")):
        ipynb = meta.with_suffix(".ipynb")
        if not ipynb.exists():
            raise ValueError(f"{meta}: provenance without its notebook {ipynb.name}")
        provenance = json.loads(meta.read_text(encoding="utf-8"))
        missing = [k for k in REQUIRED_PROVENANCE if k not in provenance]
        if missing:
            raise ValueError(f"{meta}: provenance lacks {missing}")
        expected = f"examples/{meta.parent.name}/{meta.stem}.md"
        if provenance["source"] != expected:
            raise ValueError(f"{meta}: source is {provenance['source']!r}, expected {expected!r}")
        runs.append(GpuRun(notebook=root / expected, ipynb=ipynb, provenance=provenance))
    for ipynb in sorted(store.glob("*/*.ipynb")):
        if not ipynb.with_suffix(".json").exists():
            raise ValueError(f"{ipynb}: stored GPU output without its provenance .json")
    return runs


def stale_gpu_runs(root: Path = ROOT) -> list[str]:
    """Messages naming each stored GPU output whose notebook changed (or vanished) since the run."""
    stale = []
    for run in gpu_runs(root):
        if not run.notebook.exists():
            stale.append(
                f"{run.ipynb.relative_to(root)}: its notebook {run.provenance['source']} no longer exists"
            )
        elif not run.fresh:
            stale.append(
                f"{run.ipynb.relative_to(root)}: {run.provenance['source']} changed since the GPU run "
                "(sha256 differs); rerun examples/gpu-runs/run.sh on a CUDA machine or delete the pair"
            )
    return stale


# -- Sphinx hooks ------------------------------------------------------------------
def _builder_inited(app) -> None:
    srcdir = Path(app.srcdir)
    write_tag_pages(srcdir)
    app.env.site_front_matter = scan_pages(srcdir)  # read again each build; cheap
    root = Path(app.config.site_root or app.confdir)
    runs = {}
    for run in gpu_runs(root):
        if run.fresh:
            runs[run.notebook.relative_to(root).with_suffix("").as_posix()] = run
    app.env.site_gpu_runs = runs
    app.env.site_root = root
    failures = Path(app.doctreedir) / FAILURES
    if failures.exists():
        import shutil

        shutil.rmtree(failures)
    _FAILURE_DIR[:] = [failures]
    if app.config.nb_execution_mode == "cache":
        # create jupyter-cache's database here, once: parallel readers would race to create it
        from jupyter_cache import get_cache

        get_cache(app.config.nb_execution_cache_path or ".jupyter_cache").list_cache_records()


def _tags_line(tags: list[str]) -> str:
    links = " ".join(f"{{bdg-ref-secondary}}`{t} <tag-{tag_slug(t)}>`" for t in tags)
    return f"\nTags: {links} · {{ref}}`all tags <tags-index>`\n"


def _insert_after_title(text: str, insert: str) -> str:
    """Put ``insert`` right after the first level-1 heading (outside front matter and fences)."""
    lines = text.splitlines(keepends=True)
    start = 0
    match = _FRONT_MATTER.match(text)
    if match:
        start = match.group(0).count("\n")
    fence = None
    for i in range(start, len(lines)):
        stripped = lines[i].lstrip()
        if fence is None and (
            stripped.startswith("```") or stripped.startswith("~~~") or stripped.startswith(":::")
        ):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is None and lines[i].startswith("# "):
            return "".join(lines[: i + 1]) + insert + "".join(lines[i + 1 :])
    return text + insert


def _note_inputs(app, docname: str, text: str) -> None:
    """Make a notebook's inputs, and those of every notebook a page pastes from, its dependencies."""
    env = app.env
    notebooks = {docname} if "{code-cell}" in text else set()
    notebooks |= _pasted_from(text, docname)
    for nb in sorted(notebooks):
        path = Path(env.doc2path(nb)) if nb in env.found_docs else None
        if path is None or path.suffix != ".md":
            continue
        if nb != docname:
            env.note_dependency(str(path))
        for dep in notebook_inputs(path):
            env.note_dependency(str(dep))


def _source_read(app, docname: str, source: list[str]) -> None:
    if docname.startswith("examples/gpu-runs/"):
        source[0] = _gpu_page_source(app, docname, source[0])
        return
    _note_inputs(app, docname, source[0])
    data = getattr(app.env, "site_front_matter", {}).get(docname, {})
    insert = ""
    tags = page_tags(data, docname)
    if tags:
        insert += _tags_line(tags)
    run = getattr(app.env, "site_gpu_runs", {}).get(docname)
    if run is not None:
        gpu_doc = "/" + run.ipynb.relative_to(app.env.site_root).with_suffix("").as_posix()
        insert += (
            f"\n:::{{note}}\nFull-scale outputs of this notebook on a GPU: {{doc}}`{gpu_doc}` "
            f"({run.label()}). This page shows the small CPU run made while building the site.\n:::\n"
            f"\n```{{toctree}}\n:hidden:\n\n{gpu_doc}\n```\n"
        )
    if insert:
        source[0] = _insert_after_title(source[0], insert)


def _gpu_page_source(app, docname: str, text: str) -> str:
    """Put a provenance banner on top of a stored GPU notebook (a JSON .ipynb)."""
    ipynb = Path(app.srcdir) / f"{docname}.ipynb"
    meta = json.loads(ipynb.with_suffix(".json").read_text(encoding="utf-8"))
    nb = json.loads(text)
    cpu_doc = "/" + meta["source"].removesuffix(".md")
    banner = (
        f"# GPU run: {Path(meta['source']).stem}\n\n"
        f":::{{important}}\nStored outputs of {{doc}}`{cpu_doc}` executed at full scale "
        f"on **{meta['device']}** "
        f"(driver {meta['driver']}, CUDA {meta['cuda']}, torch {meta['torch']}) on {meta['date']} by "
        "`examples/gpu-runs/run.sh` (or `nox -s notebooks-gpu`). The site build does not re-execute them."
        "\n:::\n"
    )
    state = [  # review G9: what a GPU number is compared under (examples/gpu-runs/run.sh records it)
        f"{label} {meta[key]}{unit}"
        for key, label, unit in (
            ("gpu_count", "GPUs in the machine:", ""), ("sm_clock_mhz", "SM clock", " MHz"),
            ("sm_clock_max_mhz", "max SM clock", " MHz"), ("power_limit_w", "power limit", " W"),
            ("mig_mode", "MIG", ""), ("ecc_mode", "ECC", ""), ("seconds", "run time", " s"),
            ("git_commit", "commit", ""),
        )
        if meta.get(key) is not None
    ]
    if state:
        banner += "\n" + ", ".join(state) + ".\n"
    # the MyST reader's map from cells to lines of the .md: wrong once the banner is inserted (myst-nb
    # then indexes past its end), and meaningless for a stored .ipynb
    nb.get("metadata", {}).pop("source_map", None)
    cpu_dir = Path(meta["source"]).parent.as_posix()
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = _relocated_markdown(src, cpu_dir)
    nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": banner, "id": "gpu-run-banner"})
    # the notebook's own title becomes a section below the banner's title
    for cell in nb["cells"][1:]:
        if cell["cell_type"] == "markdown":
            cell["source"] = re.sub(r"^# ", "## ", cell["source"], count=1, flags=re.MULTILINE)
            break
    return json.dumps(nb)


_PATH_DIRECTIVE = re.compile(
    r"^(\s*(?:`{3,}|:{3,})\s*\{(?:literalinclude|include|image|figure)\}\s+)(\S+)", re.M
)
_DOWNLOAD_ROLE = re.compile(r"\{download\}`(?:([^`<]*?)\s*<([^>`]+)>|([^`<>]+))`")
_DOC_ROLE = re.compile(r"\{doc\}`(?:([^`<]*?)\s*<([^>`]+)>|([^`<>]+))`")
_MD_LINK = re.compile(r"\]\((?![A-Za-z][A-Za-z0-9+.-]*:|#|/)([^)\s]+)\)")
_LABEL_LINES = re.compile(r"^(?:\([^)\s]+\)=|:(?:label|name):.*)[ \t]*\n?", re.M)


def _relocated_markdown(text: str, cpu_dir: str) -> str:
    """A stored GPU notebook's Markdown, made to build from examples/gpu-runs/<section>/ (review G2).

    Relative paths (``{literalinclude}``, ``{include}``, ``{image}``, ``{figure}``, ``{download}``,
    ``{doc}``, Markdown links) are resolved against the CPU notebook's folder ``cpu_dir`` and made
    absolute (``/`` is the source folder). A ``{download}`` of ``_generated/...`` is a file the run
    wrote, which is not stored with it: it becomes the file's name in code style. Targets and equation
    labels are dropped: the CPU notebook defines them already.
    """

    def absolute(path: str) -> str:
        return path if path.startswith("/") else "/" + posixpath.normpath(posixpath.join(cpu_dir, path))

    def download(m: re.Match) -> str:
        title, target = (m.group(1), m.group(2)) if m.group(2) else (None, m.group(3))
        if "_generated" in Path(target).parts:
            return f"`{title or Path(target).name}` (written by this run, not stored with it)"
        return f"{{download}}`{title} <{absolute(target)}>`" if title else f"{{download}}`{absolute(target)}`"

    def doc(m: re.Match) -> str:
        title, target = (m.group(1), m.group(2)) if m.group(2) else (None, m.group(3))
        return f"{{doc}}`{title} <{absolute(target)}>`" if title else f"{{doc}}`{absolute(target)}`"

    text = _PATH_DIRECTIVE.sub(lambda m: m.group(1) + absolute(m.group(2)), text)
    text = _DOWNLOAD_ROLE.sub(download, text)
    text = _DOC_ROLE.sub(doc, text)
    text = _MD_LINK.sub(lambda m: f"]({absolute(m.group(1))})", text)
    return _LABEL_LINES.sub("", text)


def _html_page_context(app, pagename, templatename, context, doctree) -> None:
    meta = app.env.metadata.get(pagename, {})
    description = meta.get("description") or getattr(app.env, "site_front_matter", {}).get(pagename, {}).get(
        "description"
    )
    if description:
        tag = f'<meta name="description" content="{html.escape(str(description), quote=True)}" />\n'
        context["metatags"] = context.get("metatags", "") + tag


# -- A description for every page -----------------------------------------------------
DESCRIPTION_CHARS = 160  # search engines show about this much


def fallback_description(doctree, title: str = "", pagename: str = "", limit: int = DESCRIPTION_CHARS) -> str:
    """A page's description when its front matter gives none: its first paragraph of prose.

    Paragraphs shorter than 40 characters, the tags line and text in admonitions or tables are
    skipped; a tag page lists the titles it links to. Cut at a word, with an ellipsis, to ``limit``.
    """
    from docutils import nodes

    def words(text: str) -> str:
        return " ".join(text.split())

    if pagename.startswith(f"{TAGS_DIR}/"):
        items = [words(i.astext()) for i in doctree.findall(nodes.list_item)]
        text = f"{title} \u2014 pages: {', '.join(items)}." if items else ""
    else:
        text = ""
        for para in doctree.findall(nodes.paragraph):
            if any(isinstance(a, (nodes.Admonition, nodes.table, nodes.footer)) for a in _ancestors(para)):
                continue
            candidate = words(para.astext())
            if len(candidate) >= 40 and not candidate.startswith("Tags:"):
                text = candidate
                break
        text = text or (f"{title}." if title else "")
    if len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "\u2026"
    return text


def repository_path_urls(buttons, docs_dir: str = "docs"):
    """The header buttons with ``<docs_dir>/examples/`` in their URLs replaced by ``examples/``.

    Notebook pages are read through the symlink docs/examples -> ../examples; GitHub does not follow
    a symlinked folder in a URL, so the theme's edit and source links (and Binder's file path) name
    the file where it lies.
    """
    if isinstance(buttons, list):
        return [repository_path_urls(b, docs_dir) for b in buttons]
    if isinstance(buttons, dict):
        out = {k: repository_path_urls(v, docs_dir) for k, v in buttons.items()}
        if isinstance(out.get("url"), str):
            out["url"] = out["url"].replace(f"/{docs_dir}/examples/", "/examples/")
        return out
    return buttons


def _notebook_button_urls(app, pagename, templatename, context, doctree) -> None:
    if pagename.startswith("examples/") and "header_buttons" in context:
        docs_dir = app.config.html_theme_options.get("path_to_docs", "docs").strip("/")
        context["header_buttons"] = repository_path_urls(context["header_buttons"], docs_dir)


def _ancestors(node):
    while node.parent is not None:
        node = node.parent
        yield node


def _fallback_meta_description(app, pagename, templatename, context, doctree) -> None:
    """Runs after ``_html_page_context``: pages without a description get ``fallback_description``."""
    if 'name="description"' in context.get("metatags", ""):
        return
    title = html.unescape(re.sub(r"<[^>]+>", "", context.get("title") or ""))
    if doctree is None:  # generated pages: search, general index
        description = f"{title} \u00b7 {app.config.project}" if title else app.config.project
    else:
        description = fallback_description(doctree, title, pagename)
    if description:
        tag = f'<meta name="description" content="{html.escape(description, quote=True)}" />\n'
        context["metatags"] = context.get("metatags", "") + tag


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _generated_store(cache_path: str, key: str) -> Path:
    return Path(cache_path) / GENERATED / key


def _cache_key(notebook, inputs: str) -> str:
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    return hashlib.sha256(json.dumps([code, inputs]).encode()).hexdigest()[:20]


def _sync_generated(nb_path: Path, store: Path, executed: bool) -> None:
    """After an execution, keep ``_generated/<slug>/``; after a cache hit, put it back."""
    import shutil

    live = nb_path.parent / GENERATED / nb_path.stem
    if executed:
        if live.is_dir() and any(live.iterdir()):
            shutil.rmtree(store, ignore_errors=True)
            shutil.copytree(live, store)
    elif store.is_dir():
        for src in store.rglob("*"):
            dst = live / src.relative_to(store)
            if src.is_file() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


FAILURES = "notebook-failures"  # in the doctree dir: one report per notebook that failed this build


def failure_report(path: Path, notebook, traceback: str, root: Path = ROOT) -> str:
    """Notebook path, code cell number and its line in the .md source, then the traceback."""
    code = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    errored = [
        i for i in code if any(o.get("output_type") == "error" for o in notebook.cells[i].get("outputs", []))
    ]
    failing = errored[0] if errored else None
    path = Path(path)
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    if failing is None:
        where = f"{shown}: a cell failed"
    else:
        source_map = notebook.metadata.get("source_map") or []
        line = source_map[failing] + 1 if failing < len(source_map) else None
        where = f"{shown}: code cell {code.index(failing) + 1}" + (f", line {line}" if line else "")
    traceback = _ANSI.sub("", traceback or "")
    cell_error = traceback.find("An error occurred while executing the following cell")
    return f"{where}\n{traceback[cell_error if cell_error >= 0 else 0:].strip()}\n"


def _patch_notebook_client() -> None:
    """Key the execution cache on a notebook's inputs, keep its ``_generated`` files, report failures.

    A failing notebook (``nb_execution_raise_on_error = False`` in conf.py, so every notebook runs)
    is reported as a warning at its failing cell's line in the .md source, with the traceback, and
    written to ``<doctree dir>/notebook-failures/`` for ``nox -s docs`` to print last.
    """
    from myst_nb.core.execute import cache

    original = cache.NotebookClientCache.start_client
    if getattr(original, "_site_extras", False):
        return

    def start_client(self):
        from jupyter_cache import get_cache

        # the notebook's inputs (rlref code, scripts, lock) join its code cells in the cache key
        inputs = inputs_hash(Path(self.path)) if self.path is not None else ""
        self.notebook.metadata.setdefault("kernelspec", {})["rlref_inputs"] = inputs
        cache_path = self.nb_config.execution_cache_path or ".jupyter_cache"
        try:
            get_cache(cache_path).match_cache_notebook(self.notebook)
            cached = True
        except KeyError:
            cached = False
        submitted = self.notebook
        original(self)
        if self.notebook is not submitted:
            # a cache hit merges the outputs into a copy; myst-nb writes the notebook it submitted to
            # jupyter_execute/ (the page's .ipynb download), so give that one the outputs too
            submitted.cells = self.notebook.cells
        if self.path is None:
            return
        if not self.exec_metadata.get("succeeded", True):
            report = failure_report(Path(self.path), self.notebook, self.exec_metadata.get("traceback"))
            _record_failure(report)
            return
        store = _generated_store(cache_path, _cache_key(self.notebook, inputs))
        _sync_generated(Path(self.path), store, executed=not cached)

    start_client._site_extras = True
    cache.NotebookClientCache.start_client = start_client


def _spread_notebooks(app, env, docnames: list[str]) -> None:
    """Spread executable documents evenly through the read order, so parallel reads share the notebooks.

    Sphinx gives each reading process a contiguous slice of the sorted docnames, and every notebook sorts
    together under ``examples/``: left alone, one process would execute nearly all of them in turn.
    """
    def executable(docname: str) -> bool:
        path = Path(env.doc2path(docname))
        return path.suffix in (".md", ".ipynb") and "{code-cell}" in path.read_text(encoding="utf-8")

    heavy = [d for d in docnames if executable(d)]
    if not heavy or app.parallel <= 1:
        return
    light = [d for d in docnames if d not in set(heavy)]
    order, step = [], (len(light) + len(heavy)) / len(heavy)
    for i, doc in enumerate(heavy):
        while light and len(order) < round(i * step):
            order.append(light.pop(0))
        order.append(doc)
    docnames[:] = order + light


_FAILURE_DIR: list[Path] = []  # set at builder-inited (inherited by parallel readers)


def _record_failure(report: str) -> None:
    from sphinx.util import logging as sphinx_logging

    first, _, traceback = report.partition("\n")
    sphinx_logging.getLogger(__name__).warning(
        f"notebook failed: {first}\n{traceback}", type="site", subtype="notebook"
    )
    if _FAILURE_DIR:
        name = hashlib.sha256(first.encode()).hexdigest()[:12] + ".txt"
        _FAILURE_DIR[0].mkdir(parents=True, exist_ok=True)
        (_FAILURE_DIR[0] / name).write_text(report, encoding="utf-8")


def _fix_pasted_refdocs(app, doctree) -> None:
    """Glue pasted from a notebook names its document, not the file behind the docs/examples link.

    myst-nb resolves ``/examples/<section>/<slug>.md`` with ``Path.resolve()``, which follows the
    symlink docs/examples -> ../examples out of the source folder and leaves an absolute path where
    a docname belongs; map it back.
    """
    from myst_nb.ext.glue.utils import PendingGlueReference

    examples = (Path(app.srcdir) / "examples").resolve()
    for node in doctree.findall(PendingGlueReference):
        refdoc = Path(node.attributes["refdoc"])
        if refdoc.is_absolute() and refdoc.is_relative_to(examples):
            node.attributes["refdoc"] = "examples/" + refdoc.relative_to(examples).as_posix()


def _mark_if_warned(app, exception) -> None:
    """A build that warned (or failed) makes the next one re-read every document."""
    marker = Path(app.doctreedir) / DIRTY_MARKER
    if exception is not None or getattr(app, "_warncount", 0):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("the last build warned: re-read every document\n", encoding="utf-8")
    elif marker.exists():
        marker.unlink()


def _reread_after_warnings(app, env, added, changed, removed) -> list[str]:
    if (Path(app.doctreedir) / DIRTY_MARKER).exists():
        return sorted(env.found_docs)
    return []


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux)
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


KATEX_STARTUP_SECONDS = 60.0


def _katex_servers_end_with_their_build() -> None:
    """sphinxcontrib-katex's node render server must not outlive the process that started it.

    It is started in every parallel writer (forked processes that exit without atexit), so it used to
    live on, holding the build's stderr: a caller capturing the output of sphinx-build then waited
    forever. Give it no stderr, and on Linux end it when its parent ends.
    """
    import subprocess

    try:
        import sphinxcontrib.katex as katex
    except ImportError:
        return
    original = katex.Popen
    if getattr(original, "_site_extras", False):
        return

    def popen(cmd, **kwargs):
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        if sys.platform == "linux":
            kwargs.setdefault("preexec_fn", _die_with_parent)
        return original(cmd, **kwargs)

    popen._site_extras = True
    katex.Popen = popen

    # The server creates its socket file a moment before it listens on it; on a loaded machine the
    # extension's single connect() lands in that gap (ConnectionRefusedError, the build aborts), and
    # its 5 s start-up limit runs out. Wait longer, and retry the connection until the limit.
    katex.STARTUP_TIMEOUT = max(getattr(katex, "STARTUP_TIMEOUT", 0), KATEX_STARTUP_SECONDS)

    def start_server_process(cls, rundir, timeout):
        socket_path = rundir / "katex.sock"
        process = katex.Popen(cls.build_command(socket=socket_path), stdin=katex.PIPE, stdout=katex.PIPE,
                              cwd=rundir)
        deadline = time.monotonic() + timeout
        while True:
            if socket_path.is_socket():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(socket_path))
                    return process, sock
                except ConnectionRefusedError:
                    sock.close()
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise cls.timeout_error(timeout)
            time.sleep(0.01)

    katex.KaTeXServer.start_server_process = classmethod(start_server_process)


def setup(app):
    _patch_notebook_client()
    _katex_servers_end_with_their_build()
    app.add_config_value("site_root", "", "env")  # repository root holding examples/ (default: confdir)
    app.connect("builder-inited", _builder_inited)
    app.connect("source-read", _source_read)
    app.connect("env-before-read-docs", _spread_notebooks)
    app.connect("html-page-context", _html_page_context)
    app.connect("html-page-context", _fallback_meta_description, priority=600)  # after the front matter's
    app.connect("html-page-context", _notebook_button_urls, priority=600)  # after the book theme's (501)
    app.connect("env-get-outdated", _reread_after_warnings)
    app.connect("doctree-read", _fix_pasted_refdocs)
    app.connect("build-finished", _mark_if_warned)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
