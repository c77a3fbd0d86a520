"""Decoding: one engine, small policy objects. `POLICIES` feeds CLI choices and UI columns."""
from __future__ import annotations

from .engine import GenerationConfig, StepEvent, generate, generate_many, run_to_end, sample_token
from .policy import Decision, Policy, StepInput, VanillaPolicy
from .safecode import SafeCoDeConfig, SafeCoDePolicy
from .safesteer import SafeSteerConfig, SafeSteerPolicy, add_probe_scores
from .trace import ACTIONS, StepRecord, Trace

POLICIES: dict[str, type[Policy]] = {
    "vanilla": VanillaPolicy,
    "safecode": SafeCoDePolicy,
    "safesteer": SafeSteerPolicy,
}


def make_policy(name: str, **knobs) -> Policy:
    """Build a policy by name; an unknown name lists the options."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; choose one of: {', '.join(POLICIES)}") from None
    return cls(**knobs)


__all__ = [
    "ACTIONS",
    "Decision",
    "GenerationConfig",
    "POLICIES",
    "SafeCoDeConfig",
    "SafeCoDePolicy",
    "SafeSteerConfig",
    "SafeSteerPolicy",
    "add_probe_scores",
    "Policy",
    "StepEvent",
    "StepInput",
    "StepRecord",
    "Trace",
    "VanillaPolicy",
    "generate",
    "generate_many",
    "make_policy",
    "run_to_end",
    "sample_token",
]
