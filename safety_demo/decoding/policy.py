"""What a decoding method is: a small object that turns next-token logits into a decision.

A policy validates its config in `__init__`, does no I/O and keeps no state between calls:
anything a run must remember (a judge's verdict, a forced prefix) lives in the `run` dict the
engine hands back on every step. The engine makes every model call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..inputs import InputError
from ..models.base import Request, VLMAdapter


def check_knobs(owner: str, checks: list[tuple[bool, str]]) -> None:
    """Raise InputError naming the first knob out of range: configs validate in __post_init__."""
    for ok, message in checks:
        if not ok:
            raise InputError(f"{owner}: {message}.")


@dataclass
class StepInput:
    """What the engine shows a policy before token `step` is chosen."""

    step: int  # 0-based index of the token being chosen
    logits: torch.Tensor  # [R, V] float32 raw next-token logits; row 0 is the user's real request
    hidden: torch.Tensor  # [R, D] float32 final-layer hidden state that produced them
    generated: list[int]  # ids chosen so far
    run: dict[str, Any]  # per-run memory from `Policy.prepare`; the policy may update it


@dataclass
class Decision:
    """The policy's answer for one step."""

    logits: torch.Tensor  # [V] the method's logits: the engine samples (or argmaxes) from these
    action: str = "kept"  # kept / boosted / suppressed / forced / reranked
    forced_token: int | None = None  # take this id without sampling
    lookahead: torch.Tensor | None = None  # [k] candidate ids to run one step ahead, then `choose`
    scores: dict[str, float] = field(default_factory=dict)  # named scalars for the trace
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [V]; chosen id recorded
    candidate_scores: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [k] for lookahead
    keep_rows: list[int] | None = None  # rows of this method's block that go on decoding (None = all)
    notes: dict[str, Any] = field(default_factory=dict)


class Policy:
    """Base policy = vanilla decoding: the model's own distribution, untouched."""

    name: ClassVar[str] = "vanilla"

    def rows(self, request: Request, seed: int) -> list[Request]:
        """The rows to decode in one batch; row 0 is always the real request."""
        return [request]

    def prepare(self, adapter: VLMAdapter, request: Request, seed: int) -> dict[str, Any]:
        """Per-run setup before the prefill (e.g. a judge); returns the run memory."""
        return {}

    def prefill_hidden(self, hidden: torch.Tensor, run: dict[str, Any]) -> torch.Tensor | None:
        """Optionally replace h₀ [D]; the first token's logits are then taken from it."""
        return None

    def step(self, inp: StepInput) -> Decision:
        return Decision(logits=inp.logits[0])

    def choose(self, inp: StepInput, decision: Decision, ahead_hidden: torch.Tensor) -> tuple[int, Decision]:
        """After a lookahead: pick one of the k candidates from their hidden states [k, D]."""
        raise NotImplementedError(f"{self.name} asked for a lookahead but does not choose")

    def describe(self) -> dict[str, Any]:
        """The knobs as plain data, for the trace and the UI."""
        return {}


class VanillaPolicy(Policy):
    """The model's own next-token distribution, greedy or sampled."""

    name = "vanilla"
