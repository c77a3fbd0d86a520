"""The app's side-by-side run: vanilla, SafeCoDe and SafeSteer on one request, streaming.

Library code (no Gradio): the app and the benchmark both call `compare`. Every method runs
in the same batch per step (`generate_many`); a method that fails ends alone with a message.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from .decoding import (
    GenerationConfig,
    SafeCoDeConfig,
    SafeCoDePolicy,
    SafeSteerConfig,
    SafeSteerPolicy,
    Trace,
    VanillaPolicy,
    add_probe_scores,
    generate_many,
)
from .models.base import Request, VLMAdapter
from .probe import DecodingProbe
from .viz.tokens import highlighted_tokens

METHODS = ("vanilla", "safecode", "safesteer")
TITLES = {"vanilla": "Vanilla", "safecode": "SafeCoDe", "safesteer": "SafeSteer"}
# Named variants for evaluation: (base method, knobs changed). The ablations are the paper's Table 3.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "safecode-probe": ("safecode", {"judge": "probe"}),  # verdict from P(harmful | h₀), no caption (ours)
    "safesteer-no-probe": ("safesteer", {"use_probe": False}),  # Table 3 "w/o DP": MSAV only
    "safesteer-no-msav": ("safesteer", {"use_msav": False}),  # Table 3 "w/o MSAV": reranking only
    "safesteer-no-both": ("safesteer", {"use_probe": False, "use_msav": False}),  # Table 3 "w/o Both" (= vanilla)
}


def method_names() -> tuple[str, ...]:
    """Every name `make_policies` accepts: the three methods, then their variants."""
    return METHODS + tuple(VARIANTS)


@dataclass
class CompareConfig:
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    safecode: SafeCoDeConfig = field(default_factory=SafeCoDeConfig)
    safesteer: SafeSteerConfig = field(default_factory=SafeSteerConfig)
    methods: tuple[str, ...] = METHODS  # which columns to run


@dataclass
class Column:
    """What one answer column shows at this moment."""

    method: str
    text: str = ""
    tokens: list[tuple[str, float | None]] = field(default_factory=list)  # (token, 2·P(harmful) − 1)
    n_tokens: int = 0
    seconds: float = 0.0
    done: bool = False
    error: str | None = None
    trace: Trace | None = None


def make_policies(config: CompareConfig, probe: DecodingProbe | None) -> dict:
    """One policy per name in `config.methods` (a method or a VARIANTS name)."""
    def build(name: str):
        base, knobs = VARIANTS.get(name, (name, {}))
        if base == "vanilla":
            return VanillaPolicy()
        if base == "safecode":
            return SafeCoDePolicy(config=replace(config.safecode, **knobs), probe=probe)
        if base == "safesteer":
            return SafeSteerPolicy(config=replace(config.safesteer, **knobs), probe=probe)
        raise ValueError(f"Unknown method {name!r}; choose among: {', '.join(method_names())}")

    return {m: build(m) for m in config.methods}


def compare(
    adapter: VLMAdapter, request: Request, config: CompareConfig, probe: DecodingProbe | None = None
) -> Iterator[dict[str, Column]]:
    """Yield the columns after every token; the last yield has every trace, probe-scored."""
    columns = {m: Column(m) for m in config.methods}
    t0 = time.perf_counter()
    events = generate_many(adapter, request, make_policies(config, probe), config.generation, isolate_errors=True)
    for name, event in events:
        col = columns[name]
        if event.done:
            col.done, col.trace, col.text = True, event.trace, event.trace.text
            col.error = event.trace.meta.get("error")
            col.seconds = event.trace.meta["total_seconds"]
            if probe is not None:
                add_probe_scores(event.trace, probe)
            col.tokens = highlighted_tokens(event.trace)
            if event.trace.meta.get("stopped_on_eos"):
                col.tokens = col.tokens[:-1]  # the end-of-turn token is not part of the answer
            continue
        col.text, col.n_tokens = event.text, event.step + 1
        col.seconds = time.perf_counter() - t0
        if event.token_id in adapter.eos_token_ids:
            continue
        score = None
        if probe is not None and event.record.hidden is not None:
            score = float(2.0 * probe.prob(event.record.hidden) - 1.0)
        col.tokens.append((event.piece, score))
        yield columns
    yield columns
