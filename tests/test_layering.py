"""The import direction of the project, read from the source with `ast` (every import, also those inside
functions): the shared library (`morlaif`) imports no service and not the command line above it; a service
imports no other service's private names; the PPO trainer reaches the PM server only over HTTP; inside the
PM server the model layer imports neither serving nor training, and those two import each other not at
all; product packages hold no test stand-ins."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("pm_server", "policy_trainer", "feedback_worker")
#: the importable top-level packages of the product, and where each lives
PACKAGES = {
    "morlaif": ROOT / "shared" / "morlaif",
    "morlaif_cli": ROOT / "apps" / "morlaif_cli",
    **{s: ROOT / "services" / s for s in SERVICES},
}
TEST_ONLY = ("pytest", "hypothesis", "schemathesis", "playwright", "rigs", "tests", "conftest", "unittest.mock")


@dataclass(frozen=True)
class Import:
    module: str  # the dotted module imported (absolute)
    names: tuple[str, ...]  # the names taken from it (`from m import a, b`); () for `import m`
    where: str  # file:line, for the failure message


def _module_name(path: Path) -> str:
    for top, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([top, *parts])
    raise AssertionError(path)


def imports_of(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, (), f"{where}:{node.lineno}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield Import(module, tuple(a.name for a in node.names), f"{where}:{node.lineno}")
        elif isinstance(node, ast.Call) and _dynamic_import(node) is not None:
            yield Import(_dynamic_import(node) or "", (), f"{where}:{node.lineno}")


def _dynamic_import(call: ast.Call) -> str | None:
    """The module named by `importlib.import_module("m")` or `__import__("m")` with a literal name."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name in ("import_module", "__import__") and call.args and isinstance(call.args[0], ast.Constant):
        return str(call.args[0].value)
    return None


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_uses(path: Path, of: tuple[str, ...]) -> Iterator[str]:
    """Private names of the packages `of` that `path` reaches through a name it imported: `import a.b as m;
    m._x`, `from a import b; b._y` (imports as `imports_of` reads them are checked separately)."""
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, str] = {}  # local name -> the dotted module or object it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                bound[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, cur = [node.attr], node.value
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name) and cur.id in bound and _top(bound[cur.id]) in of:
            dotted = ".".join([bound[cur.id], *reversed(chain)])
            if any(_private(p) for p in dotted.split(".")):
                yield f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}: {dotted}"


def modules(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_tree_is_where_the_test_reads_it():
    for package, folder in PACKAGES.items():
        assert (folder / "__init__.py").is_file(), package
        assert len(modules(package)) >= 3, package


def test_the_shared_library_imports_no_service_and_not_the_command_line():
    wrong = [
        f"{i.where}: {i.module}"
        for path in modules("morlaif")
        for i in imports_of(path)
        if _top(i.module) in (*SERVICES, "morlaif_cli")
    ]
    assert wrong == []


def test_no_service_imports_the_command_line_or_another_services_private_names():
    wrong = []
    for service in SERVICES:
        for path in modules(service):
            for i in imports_of(path):
                top = _top(i.module)
                if top == "morlaif_cli":
                    wrong.append(f"{i.where}: {i.module} (the command line sits above the services)")
                elif top in SERVICES and top != service:
                    private = [p for p in (*i.module.split("."), *i.names) if _private(p)]
                    if private:
                        wrong.append(f"{i.where}: {i.module} {private}")
            others = tuple(s for s in SERVICES if s != service)
            wrong += private_uses(path, others)
    assert wrong == []


def test_the_ppo_trainer_reaches_the_pm_server_only_over_http():
    wrong = [
        f"{i.where}: {i.module}"
        for path in modules("policy_trainer")
        for i in imports_of(path)
        if _top(i.module) == "pm_server"
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("room", "must_not_import"),
    [
        ("model", ("pm_server.serving", "pm_server.training")),
        ("serving", ("pm_server.training",)),
        ("training", ("pm_server.serving",)),
    ],
)
def test_the_pm_servers_rooms(room, must_not_import):
    """model/ is shared by serving/ and training/; neither of those reaches into the other."""
    folder = PACKAGES["pm_server"] / room
    wrong = [
        f"{i.where}: {i.module}"
        for path in sorted(folder.rglob("*.py"))
        for i in imports_of(path)
        if any(_within(i.module, m) for m in must_not_import)
    ]
    assert wrong == []


def test_product_packages_hold_no_test_stand_ins():
    """No fake servers, load generators, network rigs or test helpers among the product's modules (they live
    under tests/rigs), and no product module imports a test framework or the test tree."""
    stand_in_names = ("fake", "testing", "loadgen", "netlab", "stub", "mock", "conftest")
    named = [
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in modules(package)
        if any(word in p.stem for word in stand_in_names)
    ]
    assert named == []
    classes = [
        f"{p.relative_to(ROOT)}:{node.lineno}: {node.name}"
        for package in PACKAGES
        for p in modules(package)
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.startswith(("Fake", "Stub", "Mock", "Dummy"))
    ]
    assert classes == []
    importing = [
        f"{i.where}: {i.module}"
        for package in PACKAGES
        for p in modules(package)
        for i in imports_of(p)
        if any(_within(i.module, t) for t in TEST_ONLY)
    ]
    assert importing == []


def test_the_checker_sees_what_it_must_refuse(tmp_path, monkeypatch):
    """The rules above would catch a violation: an upward import inside a function, a relative import and a
    private name, in a throwaway copy of the layout."""
    lib = tmp_path / "shared" / "morlaif"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "bad.py").write_text("def f():\n    from pm_server.serving import api\n")
    svc = tmp_path / "services" / "policy_trainer"
    svc.mkdir(parents=True)
    (svc / "__init__.py").write_text("")
    (svc / "sub.py").write_text(
        "from . import other\nfrom feedback_worker.cli import _open\nimport feedback_worker.cli as fc\n"
        "from feedback_worker import worker\nimport importlib\n"
        "def f():\n    fc._x()\n    worker._claim\n    importlib.import_module('pm_server.serving')\n"
    )
    monkeypatch.setitem(PACKAGES, "morlaif", lib)
    monkeypatch.setitem(PACKAGES, "policy_trainer", svc)
    got = [(i.module, i.names) for i in imports_of(svc / "sub.py")]
    assert sorted(got) == [
        ("feedback_worker", ("worker",)),
        ("feedback_worker.cli", ()),
        ("feedback_worker.cli", ("_open",)),
        ("importlib", ()),
        ("pm_server.serving", ()),
        ("policy_trainer", ("other",)),
    ]
    uses = [u.split(": ", 1)[1] for u in private_uses(svc / "sub.py", ("feedback_worker",))]
    assert sorted(uses) == ["feedback_worker.cli._x", "feedback_worker.worker._claim"]
    assert [i.module for i in imports_of(lib / "bad.py")] == ["pm_server.serving"]
