"""The package's layers: what each subpackage may import, no cycles, nothing loose at the root.

Read statically (every ``import`` statement, function-level ones included),
so the rules hold for code paths no other test reaches.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import caswit_geo

PACKAGE = Path(caswit_geo.__file__).parent
REPO = PACKAGE.parent
TESTS = Path(__file__).resolve().parent

# What each subpackage may import besides itself (docs/ARCHITECTURE.md draws the same table).
ALLOWED = {
    "core": set(),
    "safeio": {"core"},
    "runtime": {"core"},
    "model": {"runtime", "safeio", "core"},
    "geo": {"runtime", "safeio", "core"},
    "synthetic": {"geo", "runtime", "safeio", "core"},
    "data": {"geo", "runtime", "safeio", "core"},
    "engine": {"model", "geo", "data", "synthetic", "runtime", "safeio", "core"},
    "cli": {"engine", "model", "geo", "data", "synthetic", "runtime", "safeio", "core"},
}
ROOT_FILES = {"__init__.py", "__main__.py"}


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The caswit_geo modules that module ``name`` (file ``path``) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        found |= {t for t in targets if t == "caswit_geo" or t.startswith("caswit_geo.")}
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def wrong_imports(modules: dict[str, Path]) -> list[str]:
    wrong = []
    for name, path in modules.items():
        mine = layer(name)
        if mine is None:  # the root (lazy names, python -m) may reach any layer
            continue
        for target in imports_of(name, path, modules):
            theirs = layer(target)
            if target != "caswit_geo" and theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{name} -> {target}")
    return sorted(wrong)


def import_cycles(modules: dict[str, Path]) -> list[str]:
    graph = {n: {t for t in imports_of(n, p, modules) if t in modules and t != n} for n, p in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def imports_of_test_modules(tests: Path = TESTS) -> list[str]:
    """``tests/**/test_*.py`` files that import a ``test_*`` module, as "file -> module" lines.

    What several test modules share belongs in tests/helpers.py or a conftest.py: importing a test
    module runs its module-level code and makes pytest see its fixtures twice.
    """
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        package = ".".join(path.relative_to(tests.parent).parent.parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                # `from pkg import test_x` imports the module pkg.test_x
                names = [source] + [f"{source}.{a.name}" for a in node.names]
            else:
                continue
            found += [f"{path.relative_to(tests.parent)} -> {n}" for n in names
                      if n.rpartition(".")[2].startswith("test_")]
    return sorted(set(found))


def test_the_package_root_holds_only_init_and_main():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ROOT_FILES)
    assert loose == []
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)


def test_imports_go_one_way():
    assert wrong_imports(all_modules()) == []


def test_no_import_cycle():
    assert import_cycles(all_modules()) == []


def test_the_checks_find_a_wrong_import_and_a_cycle_in_function_level_imports(tmp_path):
    pkg = tmp_path / "caswit_geo"
    for sub in ("geo", "engine"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "geo" / "x.py").write_text("def f():\n    from caswit_geo.engine import y\n")
    (pkg / "engine" / "y.py").write_text("from caswit_geo.geo.x import f\n")
    modules = all_modules(pkg)
    assert wrong_imports(modules) == ["caswit_geo.geo.x -> caswit_geo.engine.y"]
    assert import_cycles(modules) == ["caswit_geo.engine.y -> caswit_geo.geo.x -> caswit_geo.engine.y"]


@pytest.mark.parametrize("sub", sorted(ALLOWED))
def test_each_subpackage_says_what_it_holds_and_may_import(sub):
    doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert len(doc) > 80, f"{sub}/__init__.py needs a docstring"
    said = re.search(r"May import:(.*)", doc)
    assert said, f"{sub}/__init__.py does not say what it may import"
    named = set(re.findall(r"\b(" + "|".join(ALLOWED) + r")\b", said.group(1)))
    assert named == ALLOWED[sub]


def test_docstrings_cite_only_files_in_the_repository():
    cited = re.compile(r"\b([A-Z][A-Z_-]+\.md)\b")
    missing = []
    for path in PACKAGE.rglob("*.py"):
        for name in cited.findall(path.read_text(encoding="utf-8")):
            if not any(REPO.rglob(name)):
                missing.append(f"{path.relative_to(REPO)}: {name}")
    assert missing == []


def test_no_test_module_imports_another():
    assert imports_of_test_modules() == []


def test_the_check_finds_a_test_module_imported_in_any_form(tmp_path):
    tests = tmp_path / "tests"
    (tests / "engine").mkdir(parents=True)
    (tests / "test_a.py").write_text("from tests.engine.test_b import make_data\nfrom tests.helpers import write\n")
    (tests / "engine" / "test_b.py").write_text("def f():\n    from . import test_c\n    import tests.test_a\n")
    (tests / "engine" / "test_c.py").write_text("from .test_b import f\nfrom tests.engine import helpers\n")
    (tests / "engine" / "harness.py").write_text("from tests.test_a import x\n")  # not a test module: not checked
    assert imports_of_test_modules(tests) == [
        "tests/engine/test_b.py -> tests.engine.test_c",
        "tests/engine/test_b.py -> tests.test_a",
        "tests/engine/test_c.py -> tests.engine.test_b",
        "tests/test_a.py -> tests.engine.test_b",
    ]
