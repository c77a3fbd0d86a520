"""Model registry: one name -> one loader. The CLI and the UI picker read `model_choices()`.

Loaded adapters are cached per process (the one mutable module-level object we allow): a
model is loaded once and shared by every request, and at most SAFETY_DEMO_MAX_MODELS stay
loaded (the least recently used one is let go first).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

from ..inputs import shown
from .base import DecodeState, ForwardOut, ModelLoadError, Request, VLMAdapter
from .threads import all_cores

BUILTIN_MODELS = {
    "builtin": "Built-in pipeline VLM: Qwen2.5-Coder-0.5B-Instruct + EfficientNet-Lite0 + OCR (CPU, offline)",
    "builtin-fast": "Built-in pipeline VLM, fast variant: SmolLM2-135M-Instruct (no safety alignment; for tests)",
}
DEFAULT_MODEL = os.environ.get("SAFETY_DEMO_DEFAULT_MODEL", "builtin")  # a Space with a GPU may pick a preset

_LOADED: OrderedDict[str, VLMAdapter] = OrderedDict()  # name -> adapter, least recently used first
_LOCK = threading.Lock()


def max_models() -> int:
    """How many models stay loaded at once (SAFETY_DEMO_MAX_MODELS, at least 1; default 2)."""
    try:
        return max(1, int(os.environ.get("SAFETY_DEMO_MAX_MODELS", 2)))
    except ValueError:
        return 2


def model_choices() -> dict[str, str]:
    """Every name `load_adapter` accepts without an allow-list entry, with a one-line description."""
    from .hf import PRESETS

    choices = dict(BUILTIN_MODELS)
    for name, p in PRESETS.items():
        needs = f"GPU ≥ {p.min_vram_gb:g} GB, weights from the Hub ({p.repo_id})" if p.supported else "not supported by this transformers"
        choices[name] = f"{p.description} — needs {needs}"
    if os.environ.get("SAFETY_DEMO_FAKE_MODEL") == "1":  # tests only: the milliseconds stand-in
        choices["fake"] = "Fake tiny model for tests"
    return choices


def load_adapter(name: str = DEFAULT_MODEL) -> VLMAdapter:
    """Load (once per process) the model called `name`: builtin, a preset, or an allowed repo id."""
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise ModelLoadError(f"Unknown model {shown(name)}; `python -m safety_demo models` lists the names.")
    with _LOCK:
        if name not in _LOADED:
            while len(_LOADED) >= max_models():
                _LOADED.popitem(last=False)  # let the least recently used model go
                _free_accelerator_memory()
            with all_cores():  # a no-op outside a server (threads.py)
                _LOADED[name] = _load(name)
        _LOADED.move_to_end(name)
        return _LOADED[name]


def loaded_models() -> list[str]:
    """Names of the models in memory now, least recently used first."""
    with _LOCK:
        return list(_LOADED)


def loaded_adapters() -> list[VLMAdapter]:
    """The adapters in memory now (what may keep a shared batch alive)."""
    with _LOCK:
        return list(_LOADED.values())


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _load(name: str) -> VLMAdapter:
    if name in BUILTIN_MODELS:
        from .builtin import load_builtin

        return load_builtin("fast" if name == "builtin-fast" else "default")
    if name == "fake":  # the test stand-in (tests, CLI smoke runs); never listed in the UI
        from .fake import FakeAdapter

        return FakeAdapter()
    if name.startswith("tiny-"):
        from .tiny import load_tiny

        return load_tiny(name.removeprefix("tiny-"))
    from .hf import load_hf

    return load_hf(name)


__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "DecodeState",
    "ForwardOut",
    "ModelLoadError",
    "Request",
    "VLMAdapter",
    "load_adapter",
    "loaded_adapters",
    "loaded_models",
    "max_models",
    "model_choices",
]
