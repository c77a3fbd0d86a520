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

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from ..inputs import InputError
from ..models.base import VLMAdapter
from ..probe import DecodingProbe, describe_probe, is_components
from ..trace import MsavInfo, Trace
from .policy import Decision, Policy, View, check_knobs

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


@dataclass(frozen=True)
class SafeSteerState:
    """One run's memory: what the probe read at prefill and what MSAV did."""

    probe_h0: float  # P(harmful | h₀)
    msav: MsavInfo
    probe: str  # which probe (k, held-out AUROC), for the trace


class SafeSteerPolicy(Policy):
    """Probe-guided reranking of the first tokens, plus MSAV at prefill."""

    name = "safesteer"

    def __init__(self, probe: DecodingProbe, config: SafeSteerConfig | None = None, **knobs: Any) -> None:
        self.config = config or SafeSteerConfig(**knobs)
        self.probe = probe  # loaded or fitted before, by `safety_demo.methods` (never here)

    @classmethod
    def for_model(cls, adapter: VLMAdapter, probe: DecodingProbe, config: SafeSteerConfig | None = None, **knobs: Any) -> "SafeSteerPolicy":
        """The policy for `adapter`, refusing a probe fitted on another model's hidden states."""
        if probe.model_id != adapter.model_id:
            raise InputError(f"SafeSteer: the probe was fitted on {probe.model_id!r}, not on {adapter.model_id!r}.")
        return cls(probe, config, **knobs)

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)

    def start(self, view: View) -> tuple[SafeSteerState, torch.Tensor | None]:
        """Step 0: read P(harmful | h₀); if it exceeds the threshold, MSAV moves h₀ to h̄₀."""
        c, probe = self.config, self.probe
        h0 = view.hidden[0].float().cpu().numpy()  # [D]
        p0 = float(probe.prob(h0))
        msav = MsavInfo(fired=c.use_msav and p0 > c.threshold, mode=c.msav_mode, direction=c.msav_direction)
        h_bar = None
        if msav.fired:
            shift = msav_shift(probe, h0, c.msav_mode, c.msav_scale, c.msav_direction)
            h_bar = (h0 + shift).astype(np.float32)
            msav = replace(msav, h0bar_score=float(probe.prob(h_bar)), shift_norm=float(np.linalg.norm(shift)),
                           alpha=float(np.linalg.norm(h0 - probe.mu_cb)), h0bar=h_bar)
        state = SafeSteerState(p0, msav, describe_probe(probe))
        return state, (None if h_bar is None else torch.as_tensor(h_bar, device=view.hidden.device))

    def step(self, view: View) -> Decision:
        z = view.logits[0].float()  # [V]
        if view.state is None:
            state, h_bar = self.start(view)
            if h_bar is not None:  # the engine re-reads the first token's logits from h̄₀, then asks again
                return Decision(logits=z, steer_hidden=h_bar, state=state)
            view = replace(view, state=state)
        if not self.config.use_probe or view.step >= self.config.steps:
            return Decision(logits=z, action="kept", state=view.state)
        candidates = torch.topk(z, self.config.top_k).indices  # [k] the model's own top-k
        return Decision(logits=z, action="reranked", lookahead=candidates, state=view.state)

    def choose(self, view: View, decision: Decision, ahead_hidden: torch.Tensor) -> Decision:
        c = self.config
        s = self.probe.logit_torch(ahead_hidden)  # [k] harmful-score logit of each candidate's hidden state, eq. (5)
        if c.temperature == 0.0:
            index = int(torch.argmax(s))  # greedy eq. (6): the candidate the probe reads as most harm-aware
        else:
            weights = torch.softmax(s.cpu() / c.temperature, dim=-1)  # eq. (6): x ~ Softmax(s / T)
            index = int(torch.multinomial(weights, 1, generator=view.rng))
        rerank = torch.full_like(decision.logits, -1e9)  # [V]
        rerank[decision.lookahead.to(rerank.device)] = s.to(rerank.device)  # the method's view: softmax over s
        return replace(
            decision, logits=rerank, choice=index,
            candidate_scores={"probe.score": torch.sigmoid(s)},
            scores={"probe.chosen_score": float(torch.sigmoid(s[index])), "probe.top1_score": float(torch.sigmoid(s[0]))},
            notes={"kept_model_top1": index == 0},
        )


def add_probe_scores(trace: Trace, probe: DecodingProbe) -> None:
    """Per-token P(harmful) from the trace's hidden states (any method), as `probe.score`, and P(harmful | h₀)."""
    if trace.hidden.shape[0] == len(trace) and len(trace):
        trace.scores["probe.score"] = probe.prob(trace.hidden.astype(np.float32)).astype(np.float32)
    if trace.probe_h0 is None and trace.prefill_hidden.size:
        trace.probe_h0 = float(probe.prob(trace.prefill_hidden))
    trace.probe = trace.probe or describe_probe(probe)
