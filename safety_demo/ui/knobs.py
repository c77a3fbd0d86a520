"""Every method knob as a UI control, read back into the validated config dataclasses.

The defaults shown are the dataclasses' own, so the UI, the CLI and the library can
never disagree about a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..decoding import GenerationConfig, SafeCoDeConfig, SafeSteerConfig
from ..inputs import LIMITS, InputError
from ..probe import parse_components


@dataclass(frozen=True)
class Knob:
    config: type  # the dataclass the value belongs to
    field: str
    label: str
    kind: str  # slider / number / dropdown / checkbox
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    info: str = ""

    @property
    def default(self) -> Any:
        return {f.name: f.default for f in dataclasses.fields(self.config)}[self.field]


KNOBS: dict[str, list[Knob]] = {
    "Generation": [
        Knob(GenerationConfig, "max_new_tokens", "Max new tokens", "slider", 1, LIMITS.max_new_tokens, 1, info="answer length cap"),
        Knob(GenerationConfig, "temperature", "Temperature", "slider", 0.0, 2.0, 0.05, info="0 = greedy"),
        Knob(GenerationConfig, "top_p", "Top-p", "slider", 0.05, 1.0, 0.05, info="nucleus mass when sampling"),
        Knob(GenerationConfig, "seed", "Seed", "number", 0, 2**31 - 1, 1, info="same seed, same answer"),
    ],
    "SafeCoDe": [
        Knob(SafeCoDeConfig, "verdict", "Judge verdict", "dropdown", choices=("auto", "safe", "unsafe"), info="auto = the judge decides"),
        Knob(SafeCoDeConfig, "judge", "Judge", "dropdown", choices=("self", "probe"), info="self: the model, official prompt; probe: P(harmful | h₀) (ours)"),
        Knob(SafeCoDeConfig, "alpha_unsafe", "α after unsafe", "slider", 0.0, 1.0, 0.05, info="z(v) − α·z(ṽ)"),
        Knob(SafeCoDeConfig, "alpha_safe", "α after safe", "slider", 0.0, 1.0, 0.05),
        Knob(SafeCoDeConfig, "sigma", "Noise σ", "slider", 0.0, 0.5, 0.01, info="pixel noise of ṽ"),
        Knob(SafeCoDeConfig, "steps", "Modulated steps", "slider", 0, 20, 1),
        Knob(SafeCoDeConfig, "vocabulary", "Refusal vocabulary", "dropdown", choices=("official", "curated")),
        Knob(SafeCoDeConfig, "lambda_boost", "λ boost", "slider", 0.0, 5.0, 0.1),
        Knob(SafeCoDeConfig, "lambda_supp", "λ suppress", "slider", 0.0, 2.0, 0.1, info="1 → refusal tokens ×0.5"),
        Knob(SafeCoDeConfig, "length_cap", "Length cap after unsafe", "slider", -1, 64, 1, info="new tokens after the refusal prefix; −1 = official (Qwen 30, LLaVA 20), 0 = off"),
        Knob(SafeCoDeConfig, "safe_early_stop", "Safe path: stop once the answer reads as language", "checkbox", info="official: two words, first capitalised"),
        Knob(SafeCoDeConfig, "delta_after_steps", "Contrastive delta for every token", "checkbox", info="keeps the noised row running (one more row)"),
    ],
    "SafeSteer": [
        Knob(SafeSteerConfig, "steps", "Reranked steps", "slider", 0, 20, 1),
        Knob(SafeSteerConfig, "top_k", "Candidates k", "slider", 2, 20, 1),
        Knob(SafeSteerConfig, "threshold", "MSAV threshold", "slider", 0.0, 1.0, 0.05, info="fires when P(harmful|h₀) > this"),
        Knob(SafeSteerConfig, "msav_mode", "MSAV form", "dropdown", choices=("scaled", "literal")),
        Knob(SafeSteerConfig, "msav_scale", "MSAV scale λ", "slider", 0.0, 2.0, 0.05),
        Knob(SafeSteerConfig, "msav_direction", "MSAV direction", "dropdown", choices=("to_text", "as_written"), info="to_text: towards text-only harm"),
        Knob(SafeSteerConfig, "use_probe", "Rerank with the probe", "checkbox"),
        Knob(SafeSteerConfig, "use_msav", "Apply MSAV", "checkbox"),
        Knob(SafeSteerConfig, "probe_components", "Probe PCA components", "dropdown", choices=("auto", 4), info="auto = smallest k within 0.01 AUROC of the best; 4 = the paper"),
    ],
}

ALL_KNOBS = [k for group in KNOBS.values() for k in group]


def read_configs(values: list[Any]) -> tuple[GenerationConfig, SafeCoDeConfig, SafeSteerConfig]:
    """Values in ALL_KNOBS order -> the three validated configs (InputError if out of range)."""
    grouped: dict[type, dict[str, Any]] = {GenerationConfig: {}, SafeCoDeConfig: {}, SafeSteerConfig: {}}
    for knob, value in zip(ALL_KNOBS, values):
        if value is None:
            value = knob.default
        if knob.field == "probe_components":
            try:
                value = parse_components(value)
            except ValueError as exc:
                raise InputError(f"SafeSteer: {exc}.") from None
        elif isinstance(knob.default, bool):
            value = bool(value)
        elif isinstance(knob.default, int):
            value = int(round(float(value)))
        elif isinstance(knob.default, float):
            value = float(value)
        grouped[knob.config][knob.field] = value
    return GenerationConfig(**grouped[GenerationConfig]), SafeCoDeConfig(**grouped[SafeCoDeConfig]), SafeSteerConfig(**grouped[SafeSteerConfig])
