"""The package's shape: lower layers never reach up, and decoding stays readable."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "safety_demo"
LOWER = ("models", "probe", "decoding", "data")
UPPER = ("viz", "ui", "eval", "gradio", "compare", "methods", "explain", "cli")


def _imports(path: Path) -> set[str]:
    """Absolute names of what `path` imports (relative imports resolved against the package)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_upper_ones(layer):
    for path in (PACKAGE / layer).rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")
            upward = top[0] == "gradio" or (top[0] == "safety_demo" and len(top) > 1 and top[1] in UPPER)
            assert not upward, f"{path.relative_to(PACKAGE)} imports {name}"


def test_no_function_in_decoding_is_longer_than_60_lines():
    for path in (PACKAGE / "decoding").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}:{node.name} is {length} lines"


def test_app_callbacks_are_short():
    tree = ast.parse((PACKAGE.parent / "app.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 40, f"app.py:{node.name}"


def test_every_test_checks_something():
    """No test only calls a function: each asserts, expects an exception or fails explicitly."""
    for path in (PACKAGE.parent / "tests").rglob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                source = ast.unparse(node)
                assert any(word in source for word in ("assert", "raises", "pytest.fail")), f"{path.name}:{node.name}"
