"""The trace: what every view in the app reads. Data only (numpy, str, dict), no model.

One row per generated token. Named per-step scalars use one dotted spelling each, e.g.
`policy.contrastive.delta` (log p(real) − log p(noised) of the chosen token) or
`probe.score` (P(harmful) of the chosen token's hidden state).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ACTIONS = ("kept", "boosted", "suppressed", "forced", "reranked")


@dataclass
class StepRecord:
    """What the engine saw and did at one step, before it is stacked into a `Trace`."""

    token_id: int
    token: str
    candidate_ids: list[int]  # [K] candidates, by the method's probability
    raw_probs: list[float]  # [K] the model's own probability of each candidate (real image row)
    policy_probs: list[float]  # [K] the method's adjusted probability of each candidate
    candidate_tokens: list[str] = field(default_factory=list)  # [K] their texts (the trace has no tokenizer)
    action: str = "kept"
    scores: dict[str, float] = field(default_factory=dict)  # named scalars for this step
    candidate_scores: dict[str, list[float]] = field(default_factory=dict)  # named [K] vectors
    notes: dict[str, Any] = field(default_factory=dict)  # ragged extras (top movers, forced phrase)
    hidden: np.ndarray | None = None  # [D] final-layer hidden state at this token's position
    seconds: float = 0.0  # wall time spent on this step


@dataclass
class Trace:
    """A whole decode, one row per generated token (T rows, K candidates each).

    Fields:
      token_ids        [T] int64 chosen tokens
      tokens           [T] str text of each token
      candidate_ids    [T, K] int64 the method's top-K candidates (chosen token always included)
      candidate_tokens [T][K] str their texts
      raw_probs        [T, K] float32 vanilla probability of each candidate (real-image row)
      policy_probs     [T, K] float32 the method's adjusted probability of each candidate
      actions          [T] str one of ACTIONS
      scores           name -> [T] float32 (NaN where a step has no value)
      candidate_scores name -> [T, K] float32 (NaN where absent)
      hidden           [T, D] float16 hidden state at each generated token (empty if not kept)
      prefill_hidden   [D] float32 h₀: last prompt position at prefill
      notes            [T] dicts of ragged per-step extras
      meta             run-level facts: method, model, prompt, config, timings, judge, probe
    """

    method: str
    text: str
    token_ids: np.ndarray
    tokens: list[str]
    candidate_ids: np.ndarray
    candidate_tokens: list[list[str]]
    raw_probs: np.ndarray
    policy_probs: np.ndarray
    actions: list[str]
    scores: dict[str, np.ndarray]
    candidate_scores: dict[str, np.ndarray]
    hidden: np.ndarray
    prefill_hidden: np.ndarray
    notes: list[dict[str, Any]]
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        T = len(self.token_ids)
        assert len(self.tokens) == T and len(self.actions) == T and len(self.notes) == T and len(self.candidate_tokens) == T
        assert self.candidate_ids.shape[0] == T and self.candidate_ids.shape == self.raw_probs.shape
        assert self.policy_probs.shape == self.raw_probs.shape
        assert all(v.shape == (T,) for v in self.scores.values())
        assert all(v.shape == self.candidate_ids.shape for v in self.candidate_scores.values())
        assert self.hidden.shape[0] in (0, T)
        assert set(self.actions) <= set(ACTIONS), set(self.actions) - set(ACTIONS)

    def __len__(self) -> int:
        return len(self.token_ids)

    def keys(self) -> list[str]:
        """Names of every per-step capture, TransformerLens style."""
        return sorted([*self.scores, *(f"candidates.{k}" for k in self.candidate_scores)])

    def __repr__(self) -> str:
        return f"Trace(method={self.method!r}, tokens={len(self)}, keys={self.keys()})"

    @property
    def tokens_per_second(self) -> float:
        decode = self.meta.get("decode_seconds", 0.0)
        return len(self) / decode if decode > 0 else float("nan")

    @classmethod
    def from_steps(
        cls, method: str, text: str, steps: list[StepRecord], prefill_hidden: np.ndarray, meta: dict[str, Any]
    ) -> "Trace":
        T = len(steps)
        K = max((len(s.candidate_ids) for s in steps), default=0)

        def grid(get, dtype, fill):
            out = np.full((T, K), fill, dtype=dtype)
            for i, s in enumerate(steps):
                row = get(s)
                out[i, : len(row)] = row
            return out

        score_names = sorted({n for s in steps for n in s.scores})
        cand_names = sorted({n for s in steps for n in s.candidate_scores})
        hidden = [s.hidden for s in steps]
        return cls(
            method=method,
            text=text,
            token_ids=np.array([s.token_id for s in steps], dtype=np.int64),
            tokens=[s.token for s in steps],
            candidate_ids=grid(lambda s: s.candidate_ids, np.int64, -1),
            candidate_tokens=[list(s.candidate_tokens) or ["?"] * len(s.candidate_ids) for s in steps],
            raw_probs=grid(lambda s: s.raw_probs, np.float32, np.nan),
            policy_probs=grid(lambda s: s.policy_probs, np.float32, np.nan),
            actions=[s.action for s in steps],
            scores={n: np.array([s.scores.get(n, np.nan) for s in steps], dtype=np.float32) for n in score_names},
            candidate_scores={n: grid(lambda s: s.candidate_scores.get(n, []), np.float32, np.nan) for n in cand_names},
            hidden=np.stack(hidden).astype(np.float16) if steps and all(h is not None for h in hidden) else np.zeros((0, 0), np.float16),
            prefill_hidden=np.asarray(prefill_hidden, dtype=np.float32),
            notes=[s.notes for s in steps],
            meta=meta,
        )

    # ---- export -------------------------------------------------------------------------
    def to_dict(self, include_hidden: bool = False) -> dict[str, Any]:
        """JSON-ready dict; hidden states are large, so they are opt-in."""
        out: dict[str, Any] = {
            "method": self.method,
            "text": self.text,
            "meta": _jsonable(self.meta),
            "steps": [
                {
                    "step": i,
                    "token_id": int(self.token_ids[i]),
                    "token": self.tokens[i],
                    "action": self.actions[i],
                    "candidates": [
                        {
                            "token_id": int(c),
                            "token": self.candidate_tokens[i][j] if j < len(self.candidate_tokens[i]) else None,
                            "raw_prob": _num(self.raw_probs[i, j]),
                            "policy_prob": _num(self.policy_probs[i, j]),
                            **{k: _num(v[i, j]) for k, v in self.candidate_scores.items()},
                        }
                        for j, c in enumerate(self.candidate_ids[i])
                        if c >= 0
                    ],
                    "scores": {k: _num(v[i]) for k, v in self.scores.items()},
                    "notes": _jsonable(self.notes[i]),
                }
                for i in range(len(self))
            ],
            "prefill_hidden_norm": float(np.linalg.norm(self.prefill_hidden)) if self.prefill_hidden.size else None,
        }
        if include_hidden:
            out["hidden"] = self.hidden.astype(np.float32).tolist()
            out["prefill_hidden"] = self.prefill_hidden.tolist()
        return out

    def save_json(self, path: str | Path, include_hidden: bool = False) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(include_hidden), ensure_ascii=False, indent=1))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        """Rebuild from `to_dict` output (hidden states only if they were included)."""
        steps = [
            StepRecord(
                token_id=s["token_id"],
                token=s["token"],
                candidate_ids=[c["token_id"] for c in s["candidates"]],
                candidate_tokens=[c.get("token") or "?" for c in s["candidates"]],
                raw_probs=[_unnum(c["raw_prob"]) for c in s["candidates"]],
                policy_probs=[_unnum(c["policy_prob"]) for c in s["candidates"]],
                action=s["action"],
                scores={k: _unnum(v) for k, v in s["scores"].items()},
                candidate_scores=_candidate_columns(s["candidates"]),
                notes=s["notes"],
                hidden=np.asarray(data["hidden"][i], dtype=np.float32) if "hidden" in data else None,
            )
            for i, s in enumerate(data["steps"])
        ]
        prefill = np.asarray(data.get("prefill_hidden", []), dtype=np.float32)
        return cls.from_steps(data["method"], data["text"], steps, prefill, data["meta"])


def _candidate_columns(cands: list[dict[str, Any]]) -> dict[str, list[float]]:
    fixed = {"token_id", "token", "raw_prob", "policy_prob"}
    names = sorted({k for c in cands for k in c} - fixed)
    return {n: [_unnum(c.get(n)) for c in cands] for n in names}


def _num(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)


def _unnum(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and np.isnan(x):
        return None
    return x
