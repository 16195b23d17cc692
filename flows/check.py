"""`loom check`: the DAG declares what the code really does.

DVC re-runs a stage only when a listed dep changes (DVC #9195), so a component importing a
project module missing from its stage's `deps` would silently keep stale outputs. This walks
each component's imports (statically, transitively, within the project) and reports every
module that no dep covers; it also validates each stage's config and I/O binding.
"""

from __future__ import annotations

import ast
from pathlib import Path

from components import registry
from flows import project, stage_runner

PROJECT_PACKAGES = ("components", "flows")


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(root: Path, file: Path) -> set[str]:
    """Project modules `file` imports (absolute and relative, incl. `from pkg import module`)."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    package = ".".join(file.relative_to(root).with_suffix("").parts[:-1])
    found: set[str] = set()
    # Imports under `if TYPE_CHECKING:` are for annotations only: not run, not a dependency.
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PROJECT_PACKAGES}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _has_code(file: Path) -> bool:
    """Package `__init__` files holding only a docstring do not count as code to track."""
    body = ast.parse(file.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def code_files(root: Path, module: str) -> list[str]:
    """Every project file that importing `module` executes (sorted, relative to root)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        # Importing a.b.c runs a/__init__, a/b/__init__ too.
        for i in range(1, len(parts) + 1):
            file = _module_file(root, ".".join(parts[:i]))
            if file is None or file in seen:
                continue
            seen.add(file)
            todo.extend(_imports(root, file))
    return sorted(str(f.relative_to(root)) for f in seen if f.name != "__init__.py" or _has_code(f))


def problems(root: Path) -> list[str]:
    """Every inconsistency between dvc.yaml, params.yaml and the code, as readable lines."""
    found: list[str] = []
    with project.dvc_repo(root) as repo:
        specs = [project.spec_of(repo, s) for s in project.pipeline_stages(repo)]
    for spec in specs:
        if not spec.component:
            continue
        try:
            stage_runner.prepare(root, spec.name, spec)
            module = registry.module_of(spec.component)
        except Exception as err:  # noqa: BLE001 - each problem is reported, not raised
            found.append(f"{spec.name}: {err}")
            continue
        for file in code_files(root, module):
            if not project.covered(file, spec.deps):
                found.append(
                    f"{spec.name}: component {spec.component!r} imports {file}, which is not in "
                    f"the stage's deps: add `- {file}` to its deps in dvc.yaml"
                )
    return found
