"""Measure what MSAV does on a model: `python -m safety_demo.eval.msav [--model builtin]`.

For held-out calibration items (tuning stays on the project's own data), it compares h₀ with
h̄₀ under the paper-literal α and under scaled forms:
  - how far h₀ moves (‖shift‖ / ‖h₀‖),
  - the probe's P(harmful) before and after,
  - the first token's refusal-opening mass: P(first token opens a refusal) from lm_head(h̄₀),
  - whether the greedy first token changes.
The refusal openings are the first tokens of the curated refusal phrases.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from ..data.calibration import calibration_items, image_for
from ..decoding.safecode import CURATED_REFUSALS
from ..decoding.safesteer import msav_shift
from ..models import Request, load_adapter
from ..probe import extract_h0, get_probe

MEASURED = ("CB", "TYPO", "FIGSTEP")  # FIGSTEP-style rows: measuring only, never fitted on


def held_out_harmful(per_composition: int) -> list:
    """The first `per_composition` held-out harmful calibration requests of each MEASURED composition."""
    items = [it for it in calibration_items(split="heldout", compositions=MEASURED) if it.label == "harmful"]
    return [it for comp in MEASURED for it in [i for i in items if i.composition == comp][:per_composition]]


SETTINGS = [("literal", 1.0, 1), ("scaled", 0.25, 1), ("scaled", 1.0, 1), ("literal", 1.0, -1), ("scaled", 0.1, -1), ("scaled", 0.25, -1), ("scaled", 0.5, -1), ("scaled", 1.0, -1)]


def sweep(model: str = "builtin", per_composition: int = 12) -> str:
    adapter = load_adapter(model)
    probe = get_probe(adapter)
    chosen = held_out_harmful(per_composition)
    h0 = extract_h0(adapter, [Request(image_for(it), it.prompt) for it in chosen], progress=False)
    openings = sorted({adapter.encode_text(p)[0] for p in CURATED_REFUSALS})
    comps = np.array([it.composition for it in chosen])

    def refusal_mass(h: np.ndarray) -> np.ndarray:
        logits = adapter.logits_from_hidden(torch.as_tensor(h, dtype=adapter.dtype, device=adapter.device))
        return torch.softmax(logits.float(), -1)[:, openings].sum(-1).cpu().numpy()

    def first(h: np.ndarray) -> np.ndarray:
        return adapter.logits_from_hidden(torch.as_tensor(h, dtype=adapter.dtype, device=adapter.device)).argmax(-1).cpu().numpy()

    base_mass, base_first, base_p = refusal_mass(h0), first(h0), probe.prob(h0)
    lines = [
        f"MSAV on `{model}`: {len(chosen)} held-out harmful calibration items ({per_composition} per composition). "
        f"Refusal-opening mass = P(first token ∈ first tokens of the curated refusal phrases). Medians.",
        "",
        "| form | composition | ‖shift‖/‖h₀‖ | P(harmful) h₀ → h̄₀ | refusal-opening mass h₀ → h̄₀ | first token changed |",
        "|---|---|---|---|---|---|",
    ]
    for mode, scale, sign in SETTINGS:
        shifts = np.stack([msav_shift(probe, h, mode, scale, "as_written" if sign > 0 else "to_text") for h in h0])
        h_bar = h0 + shifts
        ratio = np.linalg.norm(shifts, axis=1) / np.linalg.norm(h0, axis=1)
        mass, p_bar, changed = refusal_mass(h_bar), probe.prob(h_bar), first(h_bar) != base_first
        name = ("as written, +" if sign > 0 else "to text, −") + (" literal α·μ" if mode == "literal" else f" λ = {scale}·α·μ/‖μ‖")
        for comp in ("CB", "TYPO", "FIGSTEP"):
            m = comps == comp
            lines.append(
                f"| {name} | {comp} | {statistics.median(ratio[m]):.2f} | {statistics.median(base_p[m]):.2f} → {statistics.median(p_bar[m]):.2f} "
                f"| {statistics.median(base_mass[m]):.3f} → {statistics.median(mass[m]):.3f} | {changed[m].mean():.0%} |"
            )
    return "\n".join(lines) + "\n"


CONTINUATION_SETTINGS = [  # (name, mode, scale, direction); "off" is vanilla
    ("off", None, 0.0, None),
    ("to text, λ = 0.25", "scaled", 0.25, "to_text"),
    ("to text, λ = 0.5", "scaled", 0.5, "to_text"),
    ("to text, λ = 1 (default)", "scaled", 1.0, "to_text"),
    ("as written, λ = 0.25", "scaled", 0.25, "as_written"),
    ("as written, λ = 1", "scaled", 1.0, "as_written"),
    ("as written, literal α·μ (paper)", "literal", 1.0, "as_written"),
]
CONTINUATION_TOKENS = 16


def continuation_sweep(model: str = "builtin", per_composition: int = 12) -> str:
    """MSAV judged by what the model then SAYS: 16 greedy tokens, read by the phrase refusal detector.

    The first-token refusal-opening mass above counts the token "I", which this model also writes
    as a Roman numeral ("I."); the phrase detector needs a refusal phrase. MSAV is forced to fire
    (threshold 0) so that every setting's shift is measured on every item; reranking is off.
    """
    from ..decoding import GenerationConfig, SafeSteerPolicy, VanillaPolicy, generate_many
    from .metrics import is_refusal

    adapter = load_adapter(model)
    probe = get_probe(adapter)
    chosen = held_out_harmful(per_composition)
    policies = {
        name: VanillaPolicy() if mode is None else SafeSteerPolicy(probe=probe, use_probe=False, threshold=0.0, msav_mode=mode, msav_scale=scale, msav_direction=direction)
        for name, mode, scale, direction in CONTINUATION_SETTINGS
    }
    config = GenerationConfig(max_new_tokens=CONTINUATION_TOKENS, keep_hidden=False)
    refused = {(name, comp): [] for name, *_ in CONTINUATION_SETTINGS for comp in ("CB", "TYPO", "FIGSTEP")}
    for it in chosen:
        for name, event in generate_many(adapter, Request(image_for(it), it.prompt), policies, config):
            if event.done:
                refused[(name, it.composition)].append(is_refusal(event.trace.text))
    lines = [
        f"MSAV judged by the continuation on `{model}` (probe: {probe.n_components} PCs): {len(chosen)} held-out harmful calibration "
        f"items ({per_composition} per composition), {CONTINUATION_TOKENS} greedy tokens, share read as a refusal by the phrase detector. "
        "MSAV forced to fire; no reranking.",
        "",
        "| setting | CB (text only) | TYPO | FIGSTEP |",
        "|---|---|---|---|",
    ]
    for name, *_ in CONTINUATION_SETTINGS:
        cells = [f"{sum(refused[(name, c)])}/{len(refused[(name, c)])}" for c in ("CB", "TYPO", "FIGSTEP")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--per-composition", type=int, default=12)
    parser.add_argument("--continuation", action="store_true", help="judge MSAV by 16 greedy tokens read by the phrase detector")
    args = parser.parse_args()
    print(continuation_sweep(args.model, args.per_composition) if args.continuation else sweep(args.model, args.per_composition))


if __name__ == "__main__":
    main()
