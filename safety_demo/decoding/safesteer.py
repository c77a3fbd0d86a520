"""SafeSteer: a Decoding-Probe reranks the first candidates; MSAV moves h₀ of harmful inputs.

At prefill, if the probe calls the input harmful (σ(s₀) > threshold), h̄₀ = h₀ + α·μ and the
first token's logits come from h̄₀ (the KV cache keeps the real prompt). For each of the
first `steps` tokens the top-k candidates run as ONE batch of k rows on the shared cache;
each candidate's hidden state is scored by the probe and the engine keeps the row chosen
by the paper's eq. (6), x ~ Softmax(s) over the candidates' HARMFUL-score logits s (argmax
when greedy), cache and logits included.

Why the most harmful-looking candidate: the paper's §3.2 finding (1) is that during the first
decoding steps a refusal token's hidden state scores HIGHER than a complying token's (the
probe reads the model's own recognition of harm), so the highest-s candidate is the one that
steers towards a refusal or a disclaimer. docs/RESULTS.md checks that premise on this model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..inputs import InputError
from ..models.base import Request, VLMAdapter
from ..probe import DecodingProbe, describe_probe, get_probe, is_components
from .policy import Decision, Policy, StepInput, check_knobs

MSAV_MODES = ("scaled", "literal")
MSAV_DIRECTIONS = ("to_text", "as_written")


@dataclass
class SafeSteerConfig:
    steps: int = 5  # reranked steps at the start of the answer (paper: later steps add little)
    top_k: int = 5  # candidates scored per reranked step (paper range 5–20)
    threshold: float = 0.5  # MSAV fires when the probe's P(harmful | h₀) exceeds this
    msav_mode: str = "scaled"  # "literal": α·μ with α = ‖h₀ − μ_CB‖ (paper); "scaled": λ·‖h₀ − μ_CB‖·μ/‖μ‖
    msav_scale: float = 1.0  # λ of the scaled form (a fraction of the distance to μ_CB)
    msav_direction: str = "to_text"  # "to_text": h₀ − shift, towards text-only harm; "as_written": h₀ + shift
    use_probe: bool = True  # ablation "without probe": no reranking
    use_msav: bool = True  # ablation "without MSAV"
    temperature: float = 0.0  # T of eq. (6), x ~ Softmax(s / T) over the top-k; 0 = argmax (greedy). Paper: T = 1
    probe_components: int | str = "auto"  # probe PCs: "auto" (smallest k within 0.01 AUROC of the best) or a k (paper: 4)

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.steps <= 64, "steps must be in [0, 64]"),
            (2 <= self.top_k <= 20, "top_k must be in [2, 20]"),
            (0.0 <= self.threshold <= 1.0, "threshold must be in [0, 1]"),
            (self.msav_mode in MSAV_MODES, f"msav_mode must be one of {MSAV_MODES}"),
            (0.0 <= self.msav_scale <= 10.0, "msav_scale must be in [0, 10]"),
            (self.msav_direction in MSAV_DIRECTIONS, f"msav_direction must be one of {MSAV_DIRECTIONS}"),
            (0.0 <= self.temperature <= 10.0, "temperature must be in [0, 10]"),
            (is_components(self.probe_components), "probe_components must be 'auto' or one of 4, 8, 16, 32, 64, 128"),
        ]
        check_knobs("SafeSteer", checks)


def msav_shift(probe: DecodingProbe, h0: np.ndarray, mode: str, scale: float, direction: str = "as_written") -> np.ndarray:
    """The vector added to h₀.

    literal: α·μ with α = ‖h₀ − μ_CB‖₂, as the paper writes it; scaled: λ·α·μ/‖μ‖ (a step of a
    fraction λ of the distance to the text-only centroid). μ points from text-only to
    image-carried harm, so "as_written" (+) moves h₀ towards image-carried harm and "to_text"
    (−) towards text-only harm, where the model's own refusal lives (docs/RESULTS.md).
    """
    alpha = float(np.linalg.norm(h0 - probe.mu_cb))
    shift = alpha * probe.mu if mode == "literal" else scale * alpha * probe.mu / max(float(np.linalg.norm(probe.mu)), 1e-8)
    return -shift if direction == "to_text" else shift


class SafeSteerPolicy(Policy):
    """Probe-guided reranking of the first tokens, plus MSAV at prefill."""

    name = "safesteer"

    def __init__(self, config: SafeSteerConfig | None = None, probe: DecodingProbe | None = None, **knobs: Any) -> None:
        self.config = config or SafeSteerConfig(**knobs)
        self.probe = probe  # None: fitted or loaded for the adapter on first use

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)

    def prepare(self, adapter: VLMAdapter, request: Request, seed: int) -> dict[str, Any]:
        probe = self.probe if self.probe is not None else get_probe(adapter, components=self.config.probe_components)
        if probe.model_id != adapter.model_id:
            raise InputError(f"SafeSteer: the probe was fitted on {probe.model_id!r}, not on {adapter.model_id!r}.")
        return {"_probe": probe, "_generator": torch.Generator().manual_seed(seed), "probe_metrics": probe.metrics, "probe": describe_probe(probe)}

    def prefill_hidden(self, hidden: torch.Tensor, run: dict[str, Any]) -> torch.Tensor | None:
        c, probe = self.config, run["_probe"]
        h0 = hidden.float().cpu().numpy()
        p0 = float(probe.prob(h0))
        fired = c.use_msav and p0 > c.threshold
        run["msav"] = {"h0_score": p0, "fired": fired, "mode": c.msav_mode, "direction": c.msav_direction}
        if not fired:
            return None
        shift = msav_shift(probe, h0, c.msav_mode, c.msav_scale, c.msav_direction)
        h_bar = h0 + shift
        run["msav"].update(h0bar_score=float(probe.prob(h_bar)), shift_norm=float(np.linalg.norm(shift)), alpha=float(np.linalg.norm(h0 - probe.mu_cb)))
        return torch.as_tensor(h_bar, dtype=hidden.dtype, device=hidden.device)

    def step(self, inp: StepInput) -> Decision:
        z = inp.logits[0].float()  # [V]
        if not self.config.use_probe or inp.step >= self.config.steps:
            return Decision(logits=z, action="kept")
        candidates = torch.topk(z, self.config.top_k).indices  # [k] the model's own top-k
        return Decision(logits=z, action="reranked", lookahead=candidates)

    def choose(self, inp: StepInput, decision: Decision, ahead_hidden: torch.Tensor) -> tuple[int, Decision]:
        probe, c = inp.run["_probe"], self.config
        s = probe.logit_torch(ahead_hidden)  # [k] harmful-score logit of each candidate's hidden state, eq. (5)
        if c.temperature == 0.0:
            index = int(torch.argmax(s))  # greedy eq. (6): the candidate the probe reads as most harm-aware
        else:
            weights = torch.softmax(s.cpu() / c.temperature, dim=-1)  # eq. (6): x ~ Softmax(s / T)
            index = int(torch.multinomial(weights, 1, generator=inp.run["_generator"]))
        rerank = torch.full_like(decision.logits, -1e9)
        rerank[decision.lookahead.to(rerank.device)] = s.to(rerank.device)  # the method's view: softmax over s
        decision.logits = rerank
        decision.candidate_scores = {"probe.score": torch.sigmoid(s)}
        decision.scores = {"probe.chosen_score": float(torch.sigmoid(s[index])), "probe.top1_score": float(torch.sigmoid(s[0]))}
        decision.notes = {"kept_model_top1": index == 0}
        return index, decision


def add_probe_scores(trace, probe: DecodingProbe) -> None:
    """Per-token P(harmful) from the trace's hidden states (any method), as `probe.score`."""
    if trace.hidden.shape[0] == len(trace) and len(trace):
        trace.scores["probe.score"] = probe.prob(trace.hidden.astype(np.float32)).astype(np.float32)
    trace.meta["probe.h0_score"] = float(probe.prob(trace.prefill_hidden)) if trace.prefill_hidden.size else None
