"""Which dtype a CPU decodes fastest in: bfloat16 where it has native bf16 instructions, else float32.

On a 2-core AMD EPYC with avx512_bf16 (no AMX), a [1, 896] x [896, 14592] product takes 2.4x less
time in bfloat16 than in float32 and a batch of 3 rows costs 1.31x one row (float32: 2.9x): the
decode step is memory-bound and bf16 halves the bytes streamed, with a kernel that batches well.
Without native bf16 (plain AVX2), bfloat16 is emulated and slower than float32.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import ModelLoadError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags with bf16 dot products


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags ({} where /proc/cpuinfo is not there, as on macOS)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    return any(f in (cpu_flags() if flags is None else flags) for f in NATIVE_BF16_FLAGS)


def cpu_dtype(env: str | None = None, flags: set[str] | None = None) -> torch.dtype:
    """`SAFETY_DEMO_DTYPE` (float32 | bfloat16 | auto, default auto); auto reads the CPU's flags."""
    choice = (os.environ.get("SAFETY_DEMO_DTYPE", "auto") if env is None else env).strip().lower() or "auto"
    if choice == "auto":
        return torch.bfloat16 if has_native_bf16(flags) else torch.float32
    if choice not in DTYPES:
        raise ModelLoadError(f"SAFETY_DEMO_DTYPE must be float32, bfloat16 or auto, got {choice[:40]!r}.")
    return DTYPES[choice]


def cpu_name() -> str:
    """The CPU's model name and the flags that decide the speed here, e.g. "AMD EPYC (avx512_bf16)"."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    shown = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{name}, {os.cpu_count()} cores ({', '.join(shown) or 'no AVX-512/AVX2 flags'})"


def wholly_on_cpu(model: torch.nn.Module) -> bool:
    """Every weight on the CPU and none placed by accelerate (over GPUs, or offloaded to disk):
    where the CPU-only speed-ups (packed weights, stacked attention) apply."""
    return getattr(model, "hf_device_map", None) is None and all(p.device.type == "cpu" for p in model.parameters())
