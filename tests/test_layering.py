"""The package's layering, read from the source with ``ast`` (nothing is imported).

``osal_ray.data`` sits below scoring, experiment and strategies, so none of its modules may
import them, not even inside a function; strategies are pure numpy, so they may not import
ray or torch when they are imported (a function may, lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "osal_ray"
ABOVE_DATA = ("osal_ray.scoring", "osal_ray.experiment", "osal_ray.strategies")
HEAVY = ("ray", "torch")


def module_name(path: Path) -> str:
    """The dotted name of a module file under ``osal_ray/``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.Module, module: str, is_package: bool, top_level_only: bool) -> set[str]:
    """The absolute names ``tree`` imports (``from a import b`` gives ``a`` and ``a.b``).

    ``top_level_only``: only what runs when the module is imported, i.e. not inside a function
    and not under ``if TYPE_CHECKING:``.
    """
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if top_level_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def modules_under(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def offending(path: Path, forbidden: tuple[str, ...], top_level_only: bool) -> list[str]:
    """The imports of ``path`` that are, or lie inside, a ``forbidden`` package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = imported_modules(tree, module_name(path), path.name == "__init__.py", top_level_only)
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_the_checker_sees_absolute_relative_and_nested_imports():
    source = (
        "import ray.data\n"
        "from ..scoring import clip\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "def later():\n    from osal_ray.experiment import runner\n"
    )
    tree = ast.parse(source)
    every = imported_modules(tree, "osal_ray.data.x", False, top_level_only=False)
    assert {"ray.data", "osal_ray.scoring", "osal_ray.scoring.clip", "osal_ray.experiment", "torch"} <= every
    top = imported_modules(tree, "osal_ray.data.x", False, top_level_only=True)
    assert "ray.data" in top and "osal_ray.scoring.clip" in top
    assert "osal_ray.experiment" not in top and "torch" not in top


def test_data_imports_nothing_above_it():
    modules = modules_under("data")
    assert any(p.name == "clip_store.py" for p in modules)
    bad = {module_name(p): names for p in modules if (names := offending(p, ABOVE_DATA, top_level_only=False))}
    assert not bad, f"osal_ray.data must not import scoring, experiment or strategies: {bad}"


def test_strategies_import_neither_ray_nor_torch_at_module_level():
    modules = modules_under("strategies")
    assert modules
    bad = {module_name(p): names for p in modules if (names := offending(p, HEAVY, top_level_only=True))}
    assert not bad, f"strategies are pure numpy; import ray/torch inside the function that needs it: {bad}"
