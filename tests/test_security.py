"""Static guarantees for a public Space: no remote code, safetensors only, no shell, no eval."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "safety_demo"
SOURCES = sorted(PACKAGE.rglob("*.py")) + [PACKAGE.parent / "app.py"]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_eval_exec_or_shell(path):
    tree = ast.parse(path.read_text())
    for call in _calls(tree):
        if isinstance(call.func, ast.Name):  # builtins eval() / exec(); model.eval() is not one
            assert call.func.id not in ("eval", "exec", "compile"), f"{path.name}:{call.lineno} calls {call.func.id}"
        if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.value.id == "os":
            assert call.func.attr not in ("system", "popen"), f"{path.name}:{call.lineno} calls os.{call.func.attr}"
        for kw in call.keywords:
            if kw.arg == "shell":
                assert isinstance(kw.value, ast.Constant) and kw.value.value is False, f"{path.name}:{call.lineno} shell=True"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_remote_code_is_never_trusted(path):
    tree = ast.parse(path.read_text())
    for call in _calls(tree):
        for kw in call.keywords:
            if kw.arg == "trust_remote_code":
                assert isinstance(kw.value, ast.Constant) and kw.value.value is False, f"{path.name}:{call.lineno}"


def test_hub_weights_load_as_safetensors_only(monkeypatch):
    """load_hf asks for safetensors and no remote code (checked on the call it makes)."""
    import transformers

    from safety_demo.models import hf

    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: type("C", (), {"model_type": "llava"})())
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(hf, "_load_processor", lambda *a, **k: None)
    with pytest.raises(Exception):
        hf.load_hf("llava-1.5-7b")
    assert seen.get("use_safetensors") is True and seen.get("trust_remote_code") is False


def test_subprocess_calls_take_fixed_argument_lists():
    """The only subprocesses are `pip download` of pinned wheels and the load script's app: argv lists."""
    users = [p for p in SOURCES if "subprocess" in p.read_text()]
    assert {p.name for p in users} <= {"assemble.py", "load.py"}
