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


# Every unit of the package (a subpackage or a top-level module), lowest first. A unit may import
# only units of lower layers (any import, also inside a function): no circle and no upward arrow.
# Units in one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("config", "registry", "storage", "lock", "extras", "clustering", "runlog"),
    ("params", "cluster"),
    ("clip",),
    ("data",),
    ("models",),
    ("training",),
    ("features",),  # the simclr extractor trains its encoder (training)
    ("strategies",),
    ("scoring", "annotation"),
    ("validation",),
    ("experiment",),
    ("sweep",),
    ("service", "label", "examples"),
    ("serve",),
    ("run",),
)


def unit_of(module: str) -> str:
    """``osal_ray.annotation.files`` -> ``annotation``; ``osal_ray.lock`` -> ``lock``; the package -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_imports() -> dict[str, set[str]]:
    """unit -> the other units it imports, anywhere in its code."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        names = imported_modules(ast.parse(path.read_text(), filename=str(path)), module, path.name == "__init__.py", False)
        for name in names:
            if name.startswith("osal_ray.") and unit_of(name) != unit_of(module):
                edges.setdefault(unit_of(module), set()).add(unit_of(name))
    return edges


def test_every_unit_of_the_package_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {""}
    layered = {unit for layer in LAYERS for unit in layer}
    assert units == layered, f"units without a layer: {sorted(units - layered)}; layers naming nothing: {sorted(layered - units)}"


def test_no_unit_imports_its_own_layer_or_one_above():
    rank = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}
    edges = package_imports()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() if a for b in targets if b and rank[b] >= rank[a])
    assert not upward, f"imports that run up the layers (or across one): {upward}"


def test_the_layer_check_sees_an_upward_arrow():
    rank = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}
    tree = ast.parse("def later():\n    from osal_ray.experiment.runner import prepare_experiment\n")
    names = imported_modules(tree, "osal_ray.annotation.files", False, top_level_only=False)
    assert any(rank[unit_of(n)] >= rank["annotation"] for n in names if n.startswith("osal_ray."))
