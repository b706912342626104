"""The newcomer's map stays true: every file and function the README and docs/architecture.md name exists, and
every package's docstring names its modules.

Names are written `path/to/file.py::function` (or `::Class.method`, `::outer.inner`); a later `Class.method` in the
same page is checked against the class of that name in a file the page names. Links between the pages
(`[text](other.md#anchor)`) must reach a file and, with an anchor, one of its headings.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPS = ["README.md", "docs/architecture.md"]
TOP = ("shared", "services", "apps", "tests", "benchmarks", "scripts", "docs", "configs", "k8s", "docker", "examples",
       "adapters")  # fmt: skip
PATH_REF = re.compile(rf"^(?P<path>(?:{'|'.join(TOP)})/[\w./-]*?)(?:::(?P<name>[\w.]+))?(?:\(\))?$")
SHORT_REF = re.compile(r"^(?P<file>[\w]+\.py)::(?P<name>[\w.]+)(?:\(\))?$")  # a file the page named in full
CLASS_REF = re.compile(r"^(?P<cls>[A-Z]\w*)\.(?P<attr>\w+)(?:\(\))?$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _code_spans(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # fenced blocks are pictures and commands
    return re.findall(r"`([^`\n]+)`", text)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _defined(body: list[ast.stmt], name: str) -> ast.AST | None:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return node
    return None


def _resolve(path: Path, dotted: str) -> bool:
    """Whether `dotted` (name, Class.method, outer.inner) is defined in the module at `path` (a method also in a
    base class defined in the same module)."""
    module = _tree(path).body
    scopes: list[ast.AST] = []
    body: list[ast.stmt] = module
    for part in dotted.split("."):
        node = _defined(body, part)
        while node is None and scopes and isinstance(scopes[-1], ast.ClassDef):  # inherited from a local base
            bases = [b.id for b in scopes[-1].bases if isinstance(b, ast.Name)]
            parents = [c for c in (_defined(module, b) for b in bases) if isinstance(c, ast.ClassDef)]
            if not parents:
                return False
            scopes[-1] = parents[0]
            node = _defined(parents[0].body, part)
        if node is None:
            return False
        scopes.append(node)
        body = getattr(node, "body", [])
    return True


def _references(page: str) -> tuple[list[tuple[str, str | None]], list[tuple[str, str]]]:
    """(path, name or None) for every `path[::name]` and `file.py::name` (the last `.../file.py` the page named in
    full before it), and (Class, attr) for every `Class.attr`."""
    paths: list[tuple[str, str | None]] = []
    classes: list[tuple[str, str]] = []
    last: dict[str, str] = {}  # file name -> the last path in full with that name
    for span in _code_spans((ROOT / page).read_text()):
        if m := PATH_REF.match(span):
            paths.append((m["path"], m["name"]))
            last[m["path"].rsplit("/", 1)[-1]] = m["path"]
        elif m := SHORT_REF.match(span):
            assert m["file"] in last, f"{page}: `{span}` comes before any `.../{m['file']}` in full"
            paths.append((last[m["file"]], m["name"]))
        elif m := CLASS_REF.match(span):
            classes.append((m["cls"], m["attr"]))
    return paths, classes


@pytest.mark.parametrize("page", MAPS)
def test_every_file_and_function_named_exists(page):
    paths, classes = _references(page)
    assert paths, f"{page} names no file"
    missing = []
    for rel, name in paths:
        target = ROOT / rel
        if not target.exists():
            missing.append(f"{rel} (no such file or folder)")
        elif name is not None and not (target.suffix == ".py" and _resolve(target, name)):
            missing.append(f"{rel}::{name} (not defined there)")
    # `Class.method` on its own: checked against the class of that name in the files the page names
    known = {}
    for rel, _ in paths:
        target = ROOT / rel
        if target.suffix == ".py" and target.is_file():
            for node in _tree(target).body:
                if isinstance(node, ast.ClassDef):
                    known.setdefault(node.name, target)
    for cls, attr in classes:
        if cls in known and not _resolve(known[cls], f"{cls}.{attr}"):
            missing.append(f"{cls}.{attr} (not in {known[cls].relative_to(ROOT)})")
    assert not missing, f"{page} names what the code does not have:\n" + "\n".join(missing)


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "README.md is over 200 lines: move the detail into docs/"
    assert "../shared" not in text, "README.md names a path beside the project, which a clone does not have"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    out = set()
    for heading in re.findall(r"^#+\s+(.*?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug)
    return out


PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES)
def test_links_between_the_pages_work(page):
    src = ROOT / page
    text = re.sub(r"^```.*?^```", "", src.read_text(), flags=re.S | re.M)
    broken = []
    for m in LINK.finditer(text):
        target = m["target"]
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        rel, _, anchor = target.partition("#")
        dest = (src.parent / rel).resolve() if rel else src
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading in {dest.relative_to(ROOT)})")
    assert not broken, f"{page} links to:\n" + "\n".join(broken)


PACKAGES = [
    "shared/morlaif",
    "shared/morlaif/judges",
    "shared/morlaif/store",
    "shared/morlaif/integrations",
    "apps/morlaif_cli",
    "services/pm_server",
    "services/pm_server/model",
    "services/pm_server/serving",
    "services/pm_server/training",
    "services/policy_trainer",
    "services/feedback_worker",
    "tests/rigs",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_docstring_maps_its_modules(package):
    folder = ROOT / package
    doc = ast.get_docstring(_tree(folder / "__init__.py")) or ""
    assert "TODO" not in doc and "later issue" not in doc, f"{package}/__init__.py describes unfinished work"
    modules = [p.stem for p in folder.glob("*.py") if p.name != "__init__.py"]
    modules += [p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    unnamed = sorted(m for m in modules if f"`{m}`" not in doc)
    assert not unnamed, f"{package}/__init__.py's docstring does not name its modules {unnamed}"
