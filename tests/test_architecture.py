"""The package's layers: no import cycle, no stage recipe importing another, nothing importing upward.

Every module of ``tficlib`` sits in one layer of :data:`LAYERS`; a module may
import modules of its own layer or of lower layers, never of a higher one,
and the stage recipes (one per notebook) import no other recipe.  A new
module must be placed here (the test names it otherwise).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tficlib"

#: layer -> modules, lowest first (README, "Contributing")
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("config", "artifacts", "compat"),
    "primitives": ("metrics", "report", "plots", "ocr", "ocr.images", "ocr.recognizer", "ocr.regions",
                   "ocr.easyocr_reader", "ocr.engines", "ocr.views"),
    "data and models": ("data", "data.manifest", "data.textlines", "data.pages", "codec", "baselines", "dncnn"),
    "losses": ("losses",),
    "objectives": ("objectives",),
    "training": ("distributed", "train"),
    "evaluation": ("evaluate",),
    "stage recipes": ("tfic", "textlogit", "dequant", "evaluation"),
    "front ends": ("runner", "cli_codec", "cli_train", "kit", "widgets", "__main__", "__init__"),
}
STAGE_RECIPES = set(LAYERS["stage recipes"])


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """Absolute tficlib module names an ``from ... import ...`` refers to (relative to ``module``)."""
    if node.level:
        pkg = module.split(".")
        if not (_modules()[module].name == "__init__.py"):
            pkg = pkg[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
        base = ".".join(pkg + ([node.module] if node.module else []))
    elif node.module and node.module.split(".")[0] == "tficlib":
        base = ".".join(node.module.split(".")[1:])
    else:
        return []
    known = _modules()
    names = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        names.append(candidate if candidate in known else base)
    return [n for n in names if n]


def imports(module: str) -> set[str]:
    """The tficlib modules ``module`` imports (at any depth of its code)."""
    tree = ast.parse(_modules()[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.update(_resolve(module, node))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tficlib":
                    found.add(".".join(alias.name.split(".")[1:]) or "__init__")
    return {m for m in found if m and m != module}


def _layer_of() -> dict[str, int]:
    return {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def test_every_module_has_a_layer():
    placed = _layer_of()
    missing = sorted(set(_modules()) - set(placed))
    assert not missing, f"place these modules in a layer of tests/test_architecture.py: {missing}"
    gone = sorted(set(placed) - set(_modules()))
    assert not gone, f"LAYERS names modules that do not exist: {gone}"


def test_no_module_imports_upward():
    layer = _layer_of()
    names = list(LAYERS)
    bad = []
    for module in _modules():
        for target in imports(module):
            if target in layer and layer[target] > layer[module]:
                bad.append(f"{module} ({names[layer[module]]}) imports {target} ({names[layer[target]]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_stage_recipes_do_not_import_each_other():
    bad = [f"{m} imports {t}" for m in STAGE_RECIPES for t in imports(m) if t in STAGE_RECIPES]
    assert not bad, bad


def test_no_import_cycle():
    graph = {m: {t for t in imports(m) if t in _modules()} for m in _modules()}
    graph.pop("__init__", None)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            # a package's __init__ re-exporting its own submodules is not a cycle
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_import_parser_finds_relative_nested_and_package_imports():
    """The parser sees what the checks above need: relative, function-level and package imports."""
    assert "losses" in imports("objectives")
    assert "ocr" in imports("losses")
    assert {"evaluate", "train", "objectives"} <= imports("tfic")
    assert "train" not in imports("evaluate")
    assert "ocr.regions" in imports("ocr.easyocr_reader")  # from .regions import ...
    assert "data.textlines" in imports("textlogit")  # imported inside a function
