"""A scripted adapter: fixed logits per prompt and step, for tests that need exact outcomes.

A row whose prompt (or system turn) contains a script's key gets, at its step t, logits of
−20 everywhere except the tokens that step lists. Past the end of its script a row puts all
its mass on the end token. The KV "cache" is only a step counter per row, so re-indexing,
candidate rows and lanes joining mid-decode behave exactly like the real engine's bookkeeping.
"""
from __future__ import annotations

from typing import Sequence

import torch

from safety_demo.models.base import DecodeState, ForwardOut, Request, VLMAdapter
from safety_demo.models.fake import WORDS, _tokenizer

LOW = -20.0


class _Counter:
    """Stands in for a KV cache: nothing to select, nothing to join."""

    layers: list = []

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        pass


class ScriptedAdapter(VLMAdapter):
    description = "scripted logits for tests"

    def __init__(self, script: dict[str, list[dict[str, float]]], hidden: int = 8) -> None:
        self.tokenizer = _tokenizer()
        self.keys = list(script)
        self.script = script
        self.name = self.model_id = "scripted"
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.eos_token_ids = frozenset({self.tokenizer.eos_token_id})
        self._hidden = hidden

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def _key(self, request: Request) -> int:
        text = f"{request.system or ''} {request.prompt}"
        return next((i for i, k in enumerate(self.keys) if k in text), -1)

    def _out(self, keys: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> ForwardOut:
        B = len(keys)
        logits = torch.full((B, len(WORDS)), LOW)
        hidden = torch.zeros(B, self._hidden)
        for b in range(B):
            steps = self.script[self.keys[keys[b]]] if keys[b] >= 0 else []
            table = steps[t[b]] if t[b] < len(steps) else {"<eos>": 0.0}
            for word, logit in table.items():
                logits[b, WORDS.index(word)] = logit
            hidden[b, int(t[b]) % self._hidden] = 1.0
        return ForwardOut(logits, hidden, DecodeState(_Counter(), mask, {"key": keys, "t": t}))

    def prefill(self, requests: Sequence[Request], continuations: Sequence[Sequence[int]] | None = None) -> ForwardOut:
        keys = torch.tensor([self._key(r) for r in requests])
        t = torch.tensor([len(c) for c in continuations] if continuations else [0] * len(requests))
        return self._out(keys, t, torch.ones(len(requests), 1, dtype=torch.long))

    def step(self, token_ids: torch.Tensor, state: DecodeState) -> ForwardOut:
        mask = torch.cat([state.attention_mask, torch.ones(len(token_ids), 1, dtype=torch.long)], 1)
        return self._out(state.extras["key"], state.extras["t"] + 1, mask)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.full((hidden.shape[0], len(WORDS)), LOW)


def say(text: str, logit: float = 10.0) -> list[dict[str, float]]:
    """A script that says `text`, one word per step, sure of each."""
    return [{word: logit} for word in text.split()]
