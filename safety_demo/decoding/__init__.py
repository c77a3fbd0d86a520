"""Decoding: one engine, small policy objects. The method registry is `safety_demo.methods`."""
from __future__ import annotations

from ..trace import ACTIONS, CAPTURES, StepRecord, Trace
from .engine import Engine, GenerationConfig, StepEvent, generate, generate_many, run_to_end, sample_token
from .policy import Decision, Policy, VanillaPolicy, View
from .safecode import SafeCoDeConfig, SafeCoDePolicy
from .safesteer import SafeSteerConfig, SafeSteerPolicy, add_probe_scores

__all__ = [
    "ACTIONS",
    "CAPTURES",
    "Decision",
    "Engine",
    "GenerationConfig",
    "Policy",
    "SafeCoDeConfig",
    "SafeCoDePolicy",
    "SafeSteerConfig",
    "SafeSteerPolicy",
    "StepEvent",
    "StepRecord",
    "Trace",
    "VanillaPolicy",
    "View",
    "add_probe_scores",
    "generate",
    "generate_many",
    "run_to_end",
    "sample_token",
]
