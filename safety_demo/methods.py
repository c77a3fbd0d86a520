"""The method registry: the one place a decoding method is named.

`compare`, the CLI (choices and flags), the app (columns, knob tabs, colours), eval and the
parametrized tests all read `METHODS`. Adding a method is one `Method` entry here and one
policy file in `decoding/`.

A method's `prepare` makes the model calls its policy needs before decoding (SafeCoDe's judge,
loading SafeSteer's probe; a probe is never fitted here) and returns the policy, or a generator that first yields the decodes it
needs (`decoding.Decode`), so `compare` can run them as extra rows of the shared batch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from .decoding import GenerationConfig, Policy, SafeCoDeConfig, SafeCoDePolicy, SafeSteerConfig, SafeSteerPolicy, VanillaPolicy
from .decoding.engine import Preparation, drive
from .decoding.judge import judge_steps
from .inputs import LIMITS, InputError, shown
from .models.base import Request, VLMAdapter
from .probe import DecodingProbe, get_probe, parse_components


@dataclass(frozen=True)
class Knob:
    """One config field as a control: the app builds a widget from it, eval reads its default."""

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


Prepare = Callable[[VLMAdapter, Request, Any, "DecodingProbe | None"], "Policy | Preparation"]


@dataclass(frozen=True)
class Method:
    name: str  # CLI choice, trace.method, results files
    title: str  # column heading
    color: str  # its colour in every plot
    summary: str  # one line under its column
    prepare: Prepare  # (adapter, request, its config, a probe or None) -> policy, or decodes then policy
    config: type | None = None  # its knobs' dataclass
    knobs: tuple[Knob, ...] = ()  # which of them the app shows, and how
    uses_probe: Callable[[Any], bool] = lambda config: False  # does it read SafeSteer's probe, with this config?


def _vanilla(adapter: VLMAdapter, request: Request, config: None, probe: DecodingProbe | None) -> Policy:
    return VanillaPolicy()


def _safecode(adapter: VLMAdapter, request: Request, config: SafeCoDeConfig, probe: DecodingProbe | None) -> Preparation | Policy:
    """The judge's caption and verdict decode first (or the probe reads h₀ at step 0)."""
    if config.judge == "probe":
        return SafeCoDePolicy.for_model(adapter, config, probe=probe if probe is not None else get_probe(adapter, fit_if_missing=False, progress=False))
    return _judged_safecode(adapter, request, config)


def _judged_safecode(adapter: VLMAdapter, request: Request, config: SafeCoDeConfig) -> Preparation:
    judge_adapter = adapter
    if config.judge != "self":
        from .models import load_adapter  # a second local model, loaded once per process

        judge_adapter = load_adapter(config.judge)
    judged = yield from judge_steps(judge_adapter, request, override=config.verdict, caption_max_tokens=config.caption_max_tokens, fallback=config.verdict_fallback)
    return SafeCoDePolicy.for_model(adapter, config, judged=judged)


def _safesteer(adapter: VLMAdapter, request: Request, config: SafeSteerConfig, probe: DecodingProbe | None) -> Policy:
    if probe is None:  # shipped or fitted before (`fit-probe`); never fitted inside a request
        probe = get_probe(adapter, fit_if_missing=False, progress=False, components=config.probe_components)
    return SafeSteerPolicy.for_model(adapter, probe, config)


GENERATION_KNOBS = (
    Knob(GenerationConfig, "max_new_tokens", "Max new tokens", "slider", 1, LIMITS.max_new_tokens, 1, info="answer length cap"),
    Knob(GenerationConfig, "temperature", "Temperature", "slider", 0.0, 2.0, 0.05, info="0 = greedy"),
    Knob(GenerationConfig, "top_p", "Top-p", "slider", 0.05, 1.0, 0.05, info="nucleus mass when sampling"),
    Knob(GenerationConfig, "seed", "Seed", "number", 0, 2**31 - 1, 1, info="same seed, same answer"),
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("vanilla", "Vanilla", "#7f7f7f", "The model's own answer, greedy or sampled.", _vanilla),
        Method(
            "safecode", "SafeCoDe", "#ff7f0e", "A scene judge, then real-vs-noised contrast on the first tokens.", _safecode, SafeCoDeConfig,
            (
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
            ),
            uses_probe=lambda config: config.judge == "probe",
        ),
        Method(
            "safesteer", "SafeSteer", "#2ca02c", "A probe reranks the first tokens; MSAV moves h₀ of harmful inputs.", _safesteer, SafeSteerConfig,
            (
                Knob(SafeSteerConfig, "steps", "Reranked steps", "slider", 0, 20, 1),
                Knob(SafeSteerConfig, "top_k", "Candidates k", "slider", 2, 20, 1),
                Knob(SafeSteerConfig, "threshold", "MSAV threshold", "slider", 0.0, 1.0, 0.05, info="fires when P(harmful|h₀) > this"),
                Knob(SafeSteerConfig, "msav_mode", "MSAV form", "dropdown", choices=("scaled", "literal")),
                Knob(SafeSteerConfig, "msav_scale", "MSAV scale λ", "slider", 0.0, 2.0, 0.05),
                Knob(SafeSteerConfig, "msav_direction", "MSAV direction", "dropdown", choices=("to_text", "as_written"), info="to_text: towards text-only harm"),
                Knob(SafeSteerConfig, "use_probe", "Rerank with the probe", "checkbox"),
                Knob(SafeSteerConfig, "use_msav", "Apply MSAV", "checkbox"),
                Knob(SafeSteerConfig, "probe_components", "Probe PCA components", "dropdown", choices=("auto", 4), info="auto = smallest k within 0.01 AUROC of the best; 4 = the paper"),
            ),
            uses_probe=lambda config: True,  # P(harmful | h₀) is read even with both parts off
        ),
    )
}

# Named variants for evaluation: (base method, knobs changed). The ablations are the paper's Table 3.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "safecode-probe": ("safecode", {"judge": "probe"}),  # verdict from P(harmful | h₀), no caption (ours)
    "safesteer-no-probe": ("safesteer", {"use_probe": False}),  # Table 3 "w/o DP": MSAV only
    "safesteer-no-msav": ("safesteer", {"use_msav": False}),  # Table 3 "w/o MSAV": reranking only
    "safesteer-no-both": ("safesteer", {"use_probe": False, "use_msav": False}),  # Table 3 "w/o Both" (= vanilla)
}
EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")  # variants and methods beyond the registry


def method_names() -> tuple[str, ...]:
    """Every name `prepare` accepts: the methods, then their variants."""
    return tuple(METHODS) + tuple(VARIANTS)


def base_method(name: str) -> Method:
    """The registry entry behind a method or variant name; an unknown name lists the options."""
    base = VARIANTS.get(name, (name, {}))[0]
    if base not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose among: {', '.join(method_names())}")
    return METHODS[base]


def title(name: str) -> str:
    return METHODS[name].title if name in METHODS else name


def color(name: str, index: int = 0) -> str:
    """A method's colour in every plot; variants and unknown names get a spare one."""
    return METHODS[name].color if name in METHODS else EXTRA_COLORS[index % len(EXTRA_COLORS)]


def default_configs() -> dict[str, Any]:
    """Each registered method's config at its named defaults."""
    return {m.name: m.config() for m in METHODS.values() if m.config is not None}


def method_config(name: str, configs: Mapping[str, Any] | None = None) -> Any:
    """The config `name` runs with: its base method's from `configs` (or the defaults), then the variant's changes."""
    method = base_method(name)
    if method.config is None:
        return None
    config = (configs or {}).get(method.name) or method.config()
    return replace(config, **VARIANTS.get(name, (name, {}))[1])


def uses_probe(name: str, configs: Mapping[str, Any] | None = None) -> bool:
    """Whether `name` reads the probe (so a caller loads it once, before decoding)."""
    return base_method(name).uses_probe(method_config(name, configs))


def prepare(name: str, adapter: VLMAdapter, request: Request, configs: Mapping[str, Any] | None = None, probe: DecodingProbe | None = None) -> Policy | Preparation:
    """What `name` needs before decoding `request`: a policy, or a generator of decodes that returns one."""
    return base_method(name).prepare(adapter, request, method_config(name, configs), probe)


def build(name: str, adapter: VLMAdapter, request: Request, configs: Mapping[str, Any] | None = None, probe: DecodingProbe | None = None) -> Policy:
    """`prepare`, with any decodes it needs run alone, one after the other (CLI, eval, tests)."""
    return drive(prepare(name, adapter, request, configs, probe), adapter)


# ---- knobs as the app shows them ------------------------------------------------------------
def knob_groups() -> dict[str, tuple[Knob, ...]]:
    """Tab title -> knobs: generation first, then each method with knobs, in registry order."""
    return {"Generation": GENERATION_KNOBS, **{m.title: m.knobs for m in METHODS.values() if m.knobs}}


def all_knobs() -> list[Knob]:
    return [k for group in knob_groups().values() for k in group]


def knob_keys() -> list[str]:
    """Each knob's name in `all_knobs()` order: `max_new_tokens` for generation, `safesteer.steps` for a method's."""
    keys = [k.field for k in GENERATION_KNOBS]
    for m in METHODS.values():
        keys += [f"{m.name}.{k.field}" for k in m.knobs]
    return keys


def knob_values(**by_key: Any) -> list[Any]:
    """Every knob at its default, except those named (`knob_values(max_new_tokens=8, **{"safecode.steps": 3})`)."""
    keys = knob_keys()
    unknown = set(by_key) - set(keys)
    if unknown:
        raise KeyError(f"unknown knobs {sorted(unknown)}; known: {', '.join(keys)}")
    return [by_key.get(key, knob.default) for key, knob in zip(keys, all_knobs())]


def read_knobs(values: list[Any]) -> tuple[GenerationConfig, dict[str, Any]]:
    """Values in `all_knobs()` order -> the generation config and each method's validated config."""
    knobs = all_knobs()
    if len(values) != len(knobs):
        raise InputError(f"Expected {len(knobs)} knob values, got {len(values)}.")
    grouped: dict[type, dict[str, Any]] = {}
    for knob, value in zip(knobs, values):
        grouped.setdefault(knob.config, {})[knob.field] = _knob_value(knob, value)
    generation = GenerationConfig(**grouped.get(GenerationConfig, {}))
    configs = {m.name: m.config(**grouped.get(m.config, {})) for m in METHODS.values() if m.config is not None}
    return generation, configs


def _knob_value(knob: Knob, value: Any) -> Any:
    """A control's value, checked against what the control offers (an API call can send anything)."""
    if value is None:
        return knob.default
    if knob.kind == "checkbox":
        if not isinstance(value, bool):
            raise InputError(f"{knob.label}: must be true or false, got {shown(value, 40)}.")
        return value
    if knob.kind == "dropdown":
        names = [str(c) for c in knob.choices]
        if str(value) not in names:
            raise InputError(f"{knob.label}: {shown(value, 40)} is not one of {', '.join(names)}.")
        value = knob.choices[names.index(str(value))]
        return parse_components(value) if knob.field == "probe_components" else value
    try:
        x = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{knob.label}: {shown(value, 40)} is not a number.") from None
    if not math.isfinite(x):
        raise InputError(f"{knob.label}: must be a finite number, got {shown(value, 40)}.")
    if not knob.minimum <= x <= knob.maximum:
        raise InputError(f"{knob.label}: {x:g} is outside the control's range, {knob.minimum:g} to {knob.maximum:g}.")
    return int(round(x)) if isinstance(knob.default, int) else x


__all__ = [
    "GENERATION_KNOBS", "METHODS", "VARIANTS", "Knob", "Method", "all_knobs", "base_method", "build", "color", "default_configs",
    "knob_groups", "knob_keys", "knob_values", "method_config", "method_names", "prepare", "read_knobs", "title", "uses_probe",
]
