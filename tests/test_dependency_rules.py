"""The dependency rules of docs/architecture.md, checked by reading every module's imports.

Each product module is parsed with :mod:`ast` (nothing is imported); every ``import`` and
``from ... import`` (at module level or inside a function, relative ones resolved) names
a module. The rules:

- engine imports neither storage nor daemon nor tools;
- storage imports no torch, directly or through the module-level imports of what it
  imports (function-level imports are lazy and do not count for that chain);
- no package imports another package's private (``_name``) module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"engine": "engine", "storage": "storage", "daemon": "daemon", "tools": "tools",
            "models": "models"}
HEAVY = ("torch", "torchvision", "tensorrt")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. marginwatch.storage.records
    target: str  # the imported module (or module.name for ``from module import name``)
    line: int
    lazy: bool  # inside a function: runs only when called


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["marginwatch", *parts])


def _imports(path: Path) -> list[Import]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.extend(Import(module, f"{base}.{a.name}", child.lineno, lazy)
                             for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def _all_imports() -> list[Import]:
    out: list[Import] = []
    for folder in PACKAGES:
        for path in sorted((REPO / folder).rglob("*.py")):
            out.extend(_imports(path))
    return out


def _package(module: str) -> str:
    return module.split(".")[1] if module.startswith("marginwatch.") else ""


def _private_part(target: str) -> str | None:
    """The first private (``_name``) part below the package, if any."""
    for part in target.split(".")[2:]:
        if part.startswith("_") and not part.startswith("__"):
            return part
    return None


IMPORTS = _all_imports()


def test_the_checker_sees_imports() -> None:
    """The parser finds known imports (so an empty violation list means something)."""
    targets = {(i.module, i.target) for i in IMPORTS}
    assert ("marginwatch.daemon.pipeline", "marginwatch.daemon.batching.TileBatcher") in targets
    assert ("marginwatch.engine.backends", "torch") in targets
    assert any(i.module == "marginwatch.daemon.cli" and i.lazy
               and i.target.startswith("marginwatch.tools.") for i in IMPORTS)


def test_engine_imports_neither_storage_nor_daemon_nor_tools() -> None:
    bad = [f"{i.module}:{i.line} imports {i.target}" for i in IMPORTS
           if _package(i.module) == "engine"
           and _package(i.target) in ("storage", "daemon", "tools")]
    assert bad == []


def _module_level_closure(start: str) -> dict[str, str]:
    """Modules reached from ``start`` through module-level imports: name -> who imported it.

    Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``; heavy libraries are
    recorded by their top-level name.
    """
    by_module: dict[str, list[Import]] = {}
    for i in IMPORTS:
        by_module.setdefault(i.module, []).append(i)
    seen = {start: ""}
    todo = [start]
    while todo:
        current = todo.pop()
        for i in by_module.get(current, []):
            if i.lazy:
                continue
            parts = i.target.split(".")
            if parts[0] in HEAVY:
                seen.setdefault(parts[0], current)
                continue
            for n in range(2, len(parts) + 1):  # marginwatch.x, marginwatch.x.y, ...
                name = ".".join(parts[:n])
                if name in by_module and name not in seen:
                    seen[name] = current
                    todo.append(name)
    return seen


def test_storage_imports_no_torch() -> None:
    storage_modules = sorted({i.module for i in IMPORTS if _package(i.module) == "storage"})
    assert "marginwatch.storage.store" in storage_modules
    bad = []
    for module in storage_modules:
        direct = [i for i in IMPORTS if i.module == module and i.target.split(".")[0] in HEAVY]
        bad += [f"{i.module}:{i.line} imports {i.target}" for i in direct]
        reached = _module_level_closure(module)
        bad += [f"{module} reaches {heavy} through {reached[heavy]}" for heavy in HEAVY
                if heavy in reached]
    assert bad == []


def _private_imports_across_packages() -> list[str]:
    return sorted({f"{i.module} imports {i.target}" for i in IMPORTS
                   if _package(i.target) and _package(i.target) != _package(i.module)
                   and _private_part(i.target) is not None})


def test_no_package_imports_another_packages_private_module() -> None:
    assert _private_imports_across_packages() == []


@pytest.mark.parametrize("module", ["marginwatch.daemon.cli", "marginwatch.storage.store"])
def test_module_names_resolve(module: str) -> None:
    assert any(i.module == module for i in IMPORTS)
