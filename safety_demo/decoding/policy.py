"""What a decoding method is: a small object that turns what the engine shows it into a decision.

The contract:
  * `step(view) -> Decision` once per token; a lookahead method also `choose(view, decision,
    ahead_hidden) -> Decision` after the engine has run its candidates one step ahead.
  * Decisions are frozen; a method builds new ones (`dataclasses.replace`), never edits one.
  * Per-run memory (a forced prefix, a verdict read from h₀) arrives in `view.state` and leaves
    in `decision.state`; `view.state` is None at step 0. The policy object itself never changes.
  * No model calls: the judge's decoding and the probe's loading happen before, in
    `safety_demo.methods`, and reach the policy through its constructor.
  * `rows(request, seed)` says which rows the method decodes ([real] or [real, noised]).
  * The trace takes the run-level facts from the final state: its `judge`, `msav`, `probe_h0`,
    `probe` and `facts` attributes, where it has them (`RUN_FACTS`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..inputs import InputError
from ..models.base import Request


RUN_FACTS = ("judge", "msav", "probe_h0", "probe", "facts")


def check_knobs(owner: str, checks: list[tuple[bool, str]]) -> None:
    """Raise InputError naming the first knob out of range: configs validate in __post_init__."""
    for ok, message in checks:
        if not ok:
            raise InputError(f"{owner}: {message}.")


@dataclass(frozen=True)
class View:
    """What the engine shows a policy before token `step` is chosen."""

    step: int  # 0-based index of the token being chosen
    logits: torch.Tensor  # [R, V] float32 next-token logits; row 0 is the user's real request
    hidden: torch.Tensor  # [R, D] float32 final-layer hidden state that produced them (h₀ at step 0)
    generated: tuple[int, ...]  # ids chosen so far
    text: str  # the answer so far, decoded
    state: Any = None  # the policy's own per-run state from the last decision (None at step 0)
    steered: bool = False  # row 0's logits were re-read from the hidden state the policy asked for
    rng: torch.Generator | None = None  # the method's own generator (sampling inside `choose`)


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one step. Fields that exclude each other are checked."""

    logits: torch.Tensor  # [V] the method's logits: the engine samples (or argmaxes) from these
    action: str = "kept"  # kept / boosted / suppressed / forced / reranked
    forced_token: int | None = None  # take this id without sampling
    lookahead: torch.Tensor | None = None  # [k] candidate ids to run one step ahead, then `choose`
    choice: int | None = None  # set by `choose`: index into `lookahead` of the kept candidate
    keep_rows: tuple[int, ...] | None = None  # rows of this method that go on decoding (None = all)
    steer_hidden: torch.Tensor | None = None  # [D] re-read row 0's logits from this hidden state, then decide again
    scores: Mapping[str, float] = field(default_factory=dict)  # CAPTURES name -> value
    per_token: Mapping[str, torch.Tensor] = field(default_factory=dict)  # CAPTURES name -> [V]; the chosen id's value is kept
    candidate_scores: Mapping[str, torch.Tensor] = field(default_factory=dict)  # CANDIDATE_CAPTURES name -> [k]
    notes: Mapping[str, Any] = field(default_factory=dict)
    state: Any = None  # the per-run state the next step's view carries

    def __post_init__(self) -> None:
        if self.forced_token is not None and self.lookahead is not None:
            raise ValueError("Decision: a step is either forced or a lookahead, not both.")
        if self.lookahead is not None and self.keep_rows is not None:
            raise ValueError("Decision: a lookahead keeps the chosen candidate's row; keep_rows does not apply.")


class Policy:
    """Base policy = vanilla decoding: the model's own distribution, untouched."""

    name: ClassVar[str] = "vanilla"

    def rows(self, request: Request, seed: int) -> list[Request]:
        """The rows to decode in one batch; row 0 is always the real request."""
        return [request]

    def step(self, view: View) -> Decision:
        return Decision(logits=view.logits[0], state=view.state)

    def choose(self, view: View, decision: Decision, ahead_hidden: torch.Tensor) -> Decision:
        """After a lookahead: pick one of the k candidates from their hidden states [k, D]."""
        raise NotImplementedError(f"{self.name} asked for a lookahead but does not choose")

    def describe(self) -> dict[str, Any]:
        """The knobs as plain data, for the trace and the UI."""
        return {}


class VanillaPolicy(Policy):
    """The model's own next-token distribution, greedy or sampled."""

    name = "vanilla"


__all__ = ["RUN_FACTS", "Decision", "InputError", "Policy", "VanillaPolicy", "View", "check_knobs"]
